"""BOHB's model (Falkner et al. 2018), a private module of the `bohb` searcher: configs as vectors,
and the pair of kernel density estimates l (good) / g (bad) fitted on one budget's results.

Every distinct parameter name is one slot. A slot whose alternatives are all choices of one length
is categorical (its value's index; Aitchison-Aitken kernel); any other slot is a unit coordinate
(`space.to_unit`: log ranges in log space, ints and mixed alternatives by bin centre; Gaussian
kernel). A slot inactive in a config (a condition not met) is imputed from another member of the
same set where it is active, or at random where none is, as hpbandster does.

Bandwidths follow statsmodels' normal reference rule (1.06 * std * n^(-1/(d+4)), per slot),
floored at `min_bandwidth` and, with `clip`, at 1 / min(100, n + 1) (hyperopt's and Optuna TPE's
"magic clip", Bergstra et al. 2011): a density of a few results that lie close together (the
model's own earlier suggestions) would otherwise shrink onto them and stop moving. Both densities
include a uniform prior weighted as `prior` results (TPE's prior), which bounds l(x) / g(x) far
from every result. Candidates are drawn around a random member of the good set (or from the prior,
with its share of the weight) with the bandwidth widened by `bandwidth_factor` (truncated to
[0, 1]; a categorical slot keeps its value with probability 1 - bandwidth), and ranked by
l(x) / g(x).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tuneyard.plugins.api import Choice, Parameter
from tuneyard.plugins.builtin.searchers import space as _space
from tuneyard.plugins.builtin.searchers.space import Config

Vector = list[float]
TINY = 1e-32  # the floor of a density, so a ratio of two vanishing densities stays finite


class Encoding:
    """Configs of one space as vectors (one coordinate per name) and back."""

    def __init__(self, space: Sequence[Parameter]) -> None:
        self.space = tuple(space)
        names = _space.names(self.space)
        self.slot = {name: i for i, name in enumerate(names)}
        self.levels = [_levels([p for p in self.space if p.name == name]) for name in names]

    def encode(self, config: Config) -> list[float | None]:
        """The config's coordinates; None where its parameter is inactive."""
        vector: list[float | None] = [None] * len(self.levels)
        for i in _space.active_indices(self.space, config):
            param = self.space[i]
            j, value = self.slot[param.name], config[param.name]
            if self.levels[j] and isinstance(param.domain, Choice):
                vector[j] = float(param.domain.values.index(value))
            else:
                vector[j] = _space.to_unit(param.domain, value)
        return vector

    def decode(self, vector: Sequence[float]) -> Config:
        """The config a vector stands for, conditions honoured (inactive coordinates unused)."""

        def pick(_: int, param: Parameter, __: Config) -> Any:
            j = self.slot[param.name]
            if self.levels[j] and isinstance(param.domain, Choice):
                return param.domain.values[min(int(vector[j]), len(param.domain.values) - 1)]
            return _space.from_unit(param.domain, vector[j])

        return _space.build(self.space, pick)

    def impute(self, rows: Sequence[Sequence[float | None]], rng: random.Random) -> list[Vector]:
        """Rows with every None replaced by that slot's value in another row, or a random one."""
        out: list[Vector] = []
        for row in rows:
            filled: Vector = []
            for j, value in enumerate(row):
                if value is None:
                    donors = [r[j] for r in rows if r[j] is not None]
                    value = rng.choice(donors) if donors else self.random_coordinate(j, rng)
                filled.append(float(value))  # type: ignore[arg-type]  # a donor is never None
            out.append(filled)
        return out

    def random_coordinate(self, j: int, rng: random.Random) -> float:
        return float(rng.randrange(self.levels[j])) if self.levels[j] else rng.random()


def _levels(alternatives: list[Parameter]) -> int:
    """Values of a categorical slot (all alternatives choices of one length), else 0 (a unit coordinate)."""
    sizes = {len(p.domain.values) if isinstance(p.domain, Choice) else 0 for p in alternatives}
    return sizes.pop() if len(sizes) == 1 else 0


class Kde:
    """A product-kernel density over vectors: Gaussian on unit coordinates, Aitchison-Aitken on categories."""

    def __init__(
        self, data: list[Vector], levels: Sequence[int], min_bandwidth: float, clip: bool = True, prior: float = 1.0
    ) -> None:
        self.data, self.levels, self.prior = data, list(levels), prior
        self.uniform = math.prod(1.0 / k for k in self.levels if k)  # the prior's density: uniform everywhere
        factor = 1.06 * len(data) ** (-1.0 / (len(self.levels) + 4))
        floor = max(min_bandwidth, 1.0 / min(100, len(data) + 1) if clip else 0.0)
        self.bandwidths: list[float] = []
        for j, k in enumerate(self.levels):
            bw = max(factor * statistics.pstdev(row[j] for row in data), floor)
            if k:  # a categorical kernel past (k - 1) / k would favour the other values
                bw = min(bw, (k - 1) / k)
            self.bandwidths.append(bw)

    def pdf(self, x: Sequence[float]) -> float:
        total = 0.0
        for row in self.data:
            density = 1.0
            for j, k in enumerate(self.levels):
                bw = self.bandwidths[j]
                if k == 1:
                    continue
                if k:
                    density *= (1.0 - bw) if int(row[j]) == int(x[j]) else bw / (k - 1)
                else:
                    z = (x[j] - row[j]) / bw
                    density *= math.exp(-0.5 * z * z) / (bw * math.sqrt(2 * math.pi))
                if density == 0.0:
                    break
            total += density
        return (total + self.prior * self.uniform) / (len(self.data) + self.prior)

    def sample(self, rng: random.Random, bandwidth_factor: float) -> Vector:
        """A vector drawn around a random member: wider kernels (`bandwidth_factor`) on unit coordinates;
        from the prior (uniform) with the prior's share of the weight."""
        if rng.random() * (len(self.data) + self.prior) < self.prior:
            return [float(rng.randrange(k)) if k else rng.random() for k in self.levels]
        row = rng.choice(self.data)
        out: Vector = []
        for j, k in enumerate(self.levels):
            bw = self.bandwidths[j]
            if k:
                out.append(row[j] if rng.random() < 1.0 - bw else float(rng.randrange(k)))
            else:
                out.append(_truncated_normal(row[j], bw * bandwidth_factor, rng))
        return out


def _truncated_normal(mean: float, sd: float, rng: random.Random) -> float:
    """A draw from N(mean, sd) truncated to [0, 1], by the inverse of its CDF."""
    normal = statistics.NormalDist(mean, sd)
    lo, hi = normal.cdf(0.0), normal.cdf(1.0)
    p = lo + rng.random() * (hi - lo)
    if not 0.0 < p < 1.0 or hi - lo < 1e-12:
        return min(max(mean, 0.0), 1.0)
    return min(max(normal.inv_cdf(p), 0.0), 1.0)


@dataclass(frozen=True)
class Model:
    """l (the good results' density) and g (the bad ones') at one budget."""

    budget: int
    good: Kde
    bad: Kde

    def ratio(self, x: Sequence[float]) -> float:
        return max(self.good.pdf(x), TINY) / max(self.bad.pdf(x), TINY)


def fit(
    budget: int,
    results: list[tuple[list[float | None], float]],
    encoding: Encoding,
    rng: random.Random,
    *,
    min_points: int,
    top_fraction: float,
    min_bandwidth: float,
    clip: bool = True,
    prior: float = 1.0,
) -> Model:
    """The model of one budget's (vector, loss) results, lowest loss best: the best
    max(min_points, floor(top_fraction * n)) are good, the worst max(min_points, n - good) bad
    (the sets overlap while n < 2 * min_points, as in the paper)."""
    ordered = [vector for vector, _ in sorted(results, key=lambda r: r[1])]
    n_good = max(min_points, int(top_fraction * len(ordered)))
    n_bad = max(min_points, len(ordered) - n_good)
    good = encoding.impute(ordered[:n_good], rng)
    bad = encoding.impute(ordered[-n_bad:], rng)
    levels = encoding.levels
    return Model(budget, Kde(good, levels, min_bandwidth, clip, prior), Kde(bad, levels, min_bandwidth, clip, prior))
