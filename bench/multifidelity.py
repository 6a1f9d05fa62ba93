"""Multi-fidelity search (issue 18): tuneyard's `bohb` against random + ASHA and Optuna's TPE + Hyperband.

    .venv/bin/python bench/multifidelity.py            # 3 synthetic problems x 10 seeds, 30 full trials of steps
    .venv/bin/python bench/multifidelity.py --quick    # 5 seeds, 15 full trials of steps
    .venv/bin/python bench/multifidelity.py --real     # also digits/convnet training, 12 epochs (slow on CPU)
    .venv/bin/python bench/multifidelity.py --problems "" --real --seeds 5   # the training alone

Synthetic problems: search_quality's branin (2-D, minimise), hartmann6 (6-D, maximise) and
conditional (a choice with its own parameters under it, log ranges; minimise), each made
multi-fidelity over 27 steps: at step t (r = 1 - t/27) a config reports its final value worsened by
``bias * r^2 * (0.5 + s)`` (s in [0, 1]: the unit coordinate of the space's last parameter, so slow
starters are misjudged at low fidelity) plus ``noise * r`` times a normal draw fixed by (seed,
config, step). At step 27 the value is exactly the function's. Every method has the same total
steps (``--full-trials`` x 27) and stops when they are spent; its result is the config with the best
value among the trials that ran all 27 steps, and its regret |f(config) - optimum|.

- ``bohb`` / ``bohb_hyperband``: tuneyard's `bohb` searcher with `asha` / `hyperband` (defaults:
  grace_period 1, reduction_factor 3, rungs at steps 1, 3, 9), and ``random_asha``: `random` with
  `asha`. Each runs through a real in-process server (``start_server``) as an external study
  (``external: {}``), the SDK's ``Client.optimize(spec, fn, n_workers)`` evaluating the steps and
  ``trial.report(step, value)`` raising Pruned on STOP; a run ends by cancelling its study when
  the steps are spent. ``bohb`` (with ASHA, the stopper random gets) is the headline.
- ``optuna_tpe_hyperband``: ``TPESampler(seed=s)`` with ``HyperbandPruner(min_resource=1,
  max_resource=27, reduction_factor=3)``, through Optuna's ask/tell with ``trial.report`` /
  ``trial.should_prune``, a define-by-run objective as an Optuna user writes it.

``--real`` adds digits with the `convnet` model, 12 epochs, searching the learning rate (log), the
width (log int), depth and momentum; every method trains with the same engine (tuneyard's
in-process trainer, one thread), the regret being 1 - the best final val_accuracy. Seeds are
0..N-1 for every method. The table comes first; the last line is one JSON object with
``median_regret`` per method and problem. Targets: bohb's median regret <= 0.7 x random_asha's and
<= optuna_tpe_hyperband's, per problem.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search_quality import PROBLEMS, Problem

from tuneyard.plugins.api import Choice, FloatRange, IntRange, Parameter
from tuneyard.plugins.builtin.searchers.space import key, to_unit

STEPS = 27
METHODS = ("bohb", "bohb_hyperband", "random_asha", "optuna_tpe_hyperband")
TUNEYARD = {"bohb": ("bohb", "asha"), "bohb_hyperband": ("bohb", "hyperband"), "random_asha": ("random", "asha")}
# (bias, noise) per problem, on the scale of the function near its optimum
FIDELITY = {"branin": (10.0, 3.0), "hartmann6": (0.6, 0.2), "conditional": (0.6, 0.2)}


@dataclass(frozen=True)
class Task:
    """What every method searches: a space, a learning curve per config, and the regret of a result."""

    name: str
    space: tuple[Parameter, ...]
    mode: str  # "min" or "max"
    steps: int
    curve: Callable[[dict[str, Any], int], Iterator[float]]  # (config, seed) -> the value at steps 1, 2, ...
    optuna_config: Callable[[Any], dict[str, Any]]
    regret: Callable[[float, dict[str, Any]], float]  # (final value, config) -> regret


def synthetic(problem: Problem, bias: float, noise: float, steps: int = STEPS) -> Task:
    """A search_quality problem whose value at step t converges to the function's at the last step."""
    last = problem.space[-1]

    def value(config: dict[str, Any], step: int, seed: int) -> float:
        final = problem.f(config)
        r = 1.0 - step / steps
        slow = 0.5 + to_unit(last.domain, config[last.name])
        draw = random.Random(f"{seed}:{problem.name}:{key(config)}:{step}").gauss(0.0, 1.0)
        worse = bias * r * r * slow + noise * r * draw
        return final + worse if problem.objective.mode == "min" else final - worse

    def curve(config: dict[str, Any], seed: int) -> Iterator[float]:
        return (value(config, step, seed) for step in range(1, steps + 1))

    def regret(_: float, config: dict[str, Any]) -> float:
        return abs(problem.f(config) - problem.optimum)

    return Task(problem.name, problem.space, problem.objective.mode, steps, curve, problem.optuna_config, regret)


REAL_EPOCHS = 12
REAL_SPACE = (
    Parameter("optimizer.lr", FloatRange(1e-3, 1.0, log=True)),
    Parameter("model.width", IntRange(4, 32, log=True)),
    Parameter("model.depth", IntRange(1, 3)),
    Parameter("optimizer.momentum", FloatRange(0.0, 0.95)),
)


def _real_optuna(trial: Any) -> dict[str, Any]:
    return {
        "optimizer.lr": trial.suggest_float("optimizer.lr", 1e-3, 1.0, log=True),
        "model.width": trial.suggest_int("model.width", 4, 32, log=True),
        "model.depth": trial.suggest_int("model.depth", 1, 3),
        "optimizer.momentum": trial.suggest_float("optimizer.momentum", 0.0, 0.95),
    }


def digits_convnet(data_root: Path) -> Task:
    """Real training: tuneyard's `digits` dataset and `convnet` model, SGD, batch 64, one torch thread;
    the value at step t is the validation accuracy after epoch t; regret = 1 - the final accuracy."""
    loaded: dict[str, Any] = {}

    def splits() -> Any:
        if not loaded:
            import torch

            from tuneyard.plugins.manager import PluginRegistry

            torch.set_num_threads(1)
            registry = PluginRegistry.load(entry_points=False)
            data = registry.create("dataset", "digits", {}, root=str(data_root))
            tensors = [
                [torch.stack([x for x, _ in split]), torch.tensor([int(y) for _, y in split])]
                for split in (data.train, data.val)
            ]
            loaded.update(registry=registry, data=data, train=tensors[0], val=tensors[1])
        return loaded

    def curve(config: dict[str, Any], seed: int) -> Iterator[float]:
        import torch

        s = splits()
        torch.manual_seed(seed)
        options = {"width": config["model.width"], "depth": config["model.depth"]}
        model = s["registry"].create(
            "model", "convnet", options, input_shape=s["data"].input_shape, num_classes=s["data"].num_classes
        )
        sgd = torch.optim.SGD(model.parameters(), lr=config["optimizer.lr"], momentum=config["optimizer.momentum"])
        (x, y), (xv, yv) = s["train"], s["val"]
        for _ in range(REAL_EPOCHS):
            model.train()
            order = torch.randperm(len(x))
            for i in range(0, len(x), 64):
                batch = order[i : i + 64]
                sgd.zero_grad()
                torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
                sgd.step()
            model.eval()
            with torch.no_grad():
                accuracy = (model(xv).argmax(1) == yv).float().mean().item()
            yield accuracy if math.isfinite(accuracy) else 0.0

    return Task("digits_convnet", REAL_SPACE, "max", REAL_EPOCHS, curve, _real_optuna, lambda v, _: 1.0 - v)


@dataclass(frozen=True)
class Outcome:
    """One method's run on one problem and seed."""

    method: str
    problem: str
    seed: int
    regret: float
    trials: int
    full: int  # trials that ran every step
    steps: int  # steps spent
    wall_s: float


class Steps:
    """The run's step budget, shared by its workers."""

    def __init__(self, total: int) -> None:
        self.left, self.total = total, total
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.left <= 0:
                return False
            self.left -= 1
            return True


class Finals:
    """Values of the trials that ran every step, with their configs; thread-safe."""

    def __init__(self) -> None:
        self.items: list[tuple[float, dict[str, Any]]] = []
        self.trials = 0
        self._lock = threading.Lock()

    def started(self) -> None:
        with self._lock:
            self.trials += 1

    def add(self, value: float, config: dict[str, Any]) -> None:
        with self._lock:
            self.items.append((value, config))

    def best(self, mode: str) -> dict[str, Any] | None:
        if not self.items:
            return None
        pick = max if mode == "max" else min
        return pick(self.items, key=lambda item: item[0])[1]


def space_spec(space: Sequence[Parameter]) -> list[dict[str, Any]]:
    """The search space as a spec's ``search_space`` entries."""
    out = []
    for p in space:
        d = p.domain
        entry: dict[str, Any] = {"name": p.name}
        if isinstance(d, Choice):
            entry["choice"] = {"values": list(d.values)}
        elif isinstance(d, IntRange):
            entry["int_range"] = {"low": d.low, "high": d.high, "log": d.log}
        else:
            assert isinstance(d, FloatRange)
            entry["float_range"] = {"low": d.low, "high": d.high, "log": d.log}
        if p.condition is not None:
            entry["condition"] = {"parent": p.condition.parent, "values": list(p.condition.values)}
        out.append(entry)
    return out


def external_spec(task: Task, method: str, seed: int, workers: int) -> dict[str, Any]:
    searcher, stopper = TUNEYARD[method]
    return {
        "name": f"multifidelity-{task.name}-{method}-{seed}",
        "external": {},
        "search_space": space_spec(task.space),
        "objective": {"metric": "value", "mode": "MAXIMIZE" if task.mode == "max" else "MINIMIZE"},
        "searcher": {"name": searcher},
        "early_stopping": {"name": stopper},
        "budget": {"max_trials": 100_000, "max_concurrent_trials": workers},
        "training": {"seed": seed, "epochs": task.steps},
    }


class Spent(Exception):  # noqa: N818 - the budget's state, not an error
    """The run's step budget is spent: the trial stops where it is."""


def steps_of(task: Task, config: dict[str, Any], seed: int, left: Steps) -> Iterator[tuple[int, float]]:
    """(step, value) of a config's curve, each step paid from the budget before it is computed."""
    curve = task.curve(config, seed)
    for step in range(1, task.steps + 1):
        if not left.take():
            raise Spent
        yield step, next(curve)


def run_tuneyard(client: Any, method: str, task: Task, seed: int, budget: int, workers: int) -> Outcome:
    """One external study through the server; cancelled once the step budget is spent."""
    from tuneyard.client.errors import Pruned

    left, finals, spent = Steps(budget), Finals(), threading.Event()

    def fn(trial: Any) -> float:
        finals.started()
        value = math.nan
        try:
            for step, value in steps_of(task, trial.config, seed, left):
                trial.report(step, value)  # raises Pruned on STOP
        except Spent:
            if not spent.is_set():
                spent.set()
                client.cancel_study(trial.study_id)
            raise Pruned("the step budget is spent") from None
        finals.add(value, trial.config)
        return value

    started = time.perf_counter()
    client.optimize(external_spec(task, method, seed, workers), fn, workers, progress=None)
    return outcome(method, task, finals, left, seed, time.perf_counter() - started)


def run_optuna(task: Task, seed: int, budget: int) -> Outcome:
    """Optuna's TPESampler + HyperbandPruner through ask/tell, reporting every step."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=f"multifidelity-{task.name}-{seed}",  # HyperbandPruner picks brackets by a hash of it
        direction="maximize" if task.mode == "max" else "minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=task.steps, reduction_factor=3),
    )
    left, finals = Steps(budget), Finals()
    started = time.perf_counter()
    while left.left > 0:
        trial = study.ask()
        config = task.optuna_config(trial)
        finals.started()
        state, value = optuna.trial.TrialState.COMPLETE, math.nan
        try:
            for step, value in steps_of(task, config, seed, left):
                trial.report(value, step)
                if trial.should_prune():
                    state = optuna.trial.TrialState.PRUNED
                    break
        except Spent:
            state = optuna.trial.TrialState.FAIL
        if state == optuna.trial.TrialState.COMPLETE:
            finals.add(value, config)
            study.tell(trial, value)
        else:
            study.tell(trial, state=state)
    return outcome("optuna_tpe_hyperband", task, finals, left, seed, time.perf_counter() - started)


def outcome(method: str, task: Task, finals: Finals, left: Steps, seed: int, wall: float) -> Outcome:
    """The run's result: the best full-fidelity trial's regret (inf when no trial ran every step)."""
    pick = max if task.mode == "max" else min
    regret = task.regret(*pick(finals.items, key=lambda item: item[0])) if finals.items else math.inf
    return Outcome(method, task.name, seed, regret, finals.trials, len(finals.items), left.total - left.left, wall)


# ---- the run ----


def measure(
    tasks: Sequence[tuple[Task, int]], methods: Sequence[str], seeds: int, workers: int, tmp: Path
) -> list[Outcome]:
    """Every method on every (task, full trials of budget) and seed; tuneyard's on one in-process server."""
    from tuneyard.client import Client
    from tuneyard.server.app import start_server

    outcomes = []
    handle = start_server(data_dir=tmp / "server", devices="cpu", cpu_slots=1)
    try:
        with Client(handle.address) as client:
            for task, full_trials in tasks:
                budget = full_trials * task.steps
                for seed in range(seeds):
                    for method in methods:
                        if method in TUNEYARD:
                            outcomes.append(run_tuneyard(client, method, task, seed, budget, workers))
                        else:
                            outcomes.append(run_optuna(task, seed, budget))
    finally:
        handle.stop()
    return outcomes


def medians(outcomes: Sequence[Outcome]) -> dict[str, dict[str, float]]:
    """Median regret per method and task."""
    groups: dict[str, dict[str, list[float]]] = {}
    for o in outcomes:
        groups.setdefault(o.method, {}).setdefault(o.problem, []).append(o.regret)
    return {m: {p: statistics.median(v) for p, v in by.items()} for m, by in groups.items()}


def table(outcomes: Sequence[Outcome], seeds: int) -> str:
    med = medians(outcomes)
    problems = list(dict.fromkeys(o.problem for o in outcomes))
    budgets = ", ".join(f"{p} {max(o.steps for o in outcomes if o.problem == p)}" for p in problems)
    lines = [
        f"multi-fidelity: {seeds} seeds; steps per run: {budgets}; median final regret"
        " (trials / full-fidelity trials per run, mean)",
        "| method               | " + " | ".join(f"{p:>22}" for p in problems) + " | seconds |",
        "|----------------------|" + "|".join("-" * 24 for _ in problems) + "|---------|",
    ]
    for method in med:
        cells = []
        for p in problems:
            mine = [o for o in outcomes if o.method == method and o.problem == p]
            trials = statistics.mean(o.trials for o in mine)
            full = statistics.mean(o.full for o in mine)
            cells.append(f"{med[method][p]:>10.4g} ({trials:>4.0f}/{full:>3.0f})")
        wall = sum(o.wall_s for o in outcomes if o.method == method)
        lines.append(f"| {method:<20} | " + " | ".join(f"{c:>22}" for c in cells) + f" | {wall:>7.1f} |")
    return "\n".join(lines)


def summary(outcomes: Sequence[Outcome], args: argparse.Namespace) -> dict[str, Any]:
    med = medians(outcomes)
    result: dict[str, Any] = {
        "seeds": args.seeds,
        "full_trials": args.full_trials,
        "real_full_trials": args.real_full_trials if args.real else None,
        "workers": args.workers,
        "median_regret": med,
    }
    if {"bohb", "random_asha", "optuna_tpe_hyperband"} <= set(med):
        ours, rand, peer = med["bohb"], med["random_asha"], med["optuna_tpe_hyperband"]
        result["bohb_vs_random_asha"] = {p: _ratio(ours[p], rand[p]) for p in ours}
        result["bohb_vs_optuna_tpe_hyperband"] = {p: _ratio(ours[p], peer[p]) for p in ours}
        result["target"] = "bohb median regret <= 0.7 x random_asha's and <= optuna_tpe_hyperband's, per problem"
        result["target_met"] = {p: ours[p] <= 0.7 * rand[p] and ours[p] <= peer[p] for p in ours}
    result["runs"] = [o.__dict__ for o in outcomes]
    return result


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 seeds, 15 full trials of steps")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 10; --quick 5)")
    parser.add_argument("--full-trials", type=int, default=None, help="budget in full trials (default 30; --quick 15)")
    parser.add_argument("--workers", type=int, default=1, help="optimize's worker threads (default 1: reproducible)")
    parser.add_argument("--problems", default=",".join(FIDELITY), help="comma-separated synthetic problems")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--real", action="store_true", help="also digits/convnet training (slow on CPU)")
    parser.add_argument("--real-full-trials", type=int, default=10, help="--real's budget in full trials (default 10)")
    args = parser.parse_args(argv)
    args.seeds = args.seeds or (5 if args.quick else 10)
    args.full_trials = args.full_trials or (15 if args.quick else 30)
    args.methods = [m for m in args.methods.split(",") if m]
    args.problems = [p for p in args.problems.split(",") if p]
    bad = [m for m in args.methods if m not in METHODS] + [p for p in args.problems if p not in FIDELITY]
    if bad:
        parser.error(f"unknown: {', '.join(bad)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    problems = {p.name: p for p in PROBLEMS}
    with tempfile.TemporaryDirectory(prefix="tuneyard-multifidelity-") as tmp:
        tasks = [(synthetic(problems[name], *FIDELITY[name]), args.full_trials) for name in args.problems]
        if args.real:
            tasks.append((digits_convnet(Path(tmp) / "data"), args.real_full_trials))
        outcomes = measure(tasks, args.methods, args.seeds, args.workers, Path(tmp))
    print(table(outcomes, args.seeds))
    print(json.dumps(summary(outcomes, args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
