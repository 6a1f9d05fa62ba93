"""Search quality: tuneyard's searchers against Optuna's TPE and random samplers, in one run.

Each searcher is driven directly (no training) on three test functions with known optima:

- branin       2-D, minimise, optimum 0.397887
- hartmann6    6-D, maximise, optimum 3.322368
- conditional  5-D, minimise, optimum 0: an optimizer choice whose branches have their own
               parameters (a repeated-name `lr` with a range per branch, an sgd-only momentum
               acting through lr / (1 - momentum)) plus a shared log-scaled weight decay and a
               dropout; the optimum is in the adam branch, the sgd branch bottoms out at 0.1

For every method x function x seed the regret is |best value found - optimum| after `--trials`
trials; the table shows the median over seeds. Optuna's samplers run with default settings
through ask/tell with a define-by-run objective, as an Optuna user would write it. With
`--concurrency N`, N trials are pending at once (suggest N, then observe the oldest, suggest one).

The last line printed is one JSON object with the headline figures. Target: our best searcher
(the one whose worst ratio to Optuna TPE over the functions is smallest) has a median regret no
larger than Optuna TPE's on every function.

    python bench/search_quality.py              # 10 seeds x 50 trials
    python bench/search_quality.py --seeds 50
    python bench/search_quality.py --quick      # 3 seeds x 30 trials
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuneyard.plugins.api import Choice, Condition, FloatRange, Objective, Parameter
from tuneyard.plugins.manager import PluginRegistry

OURS = ("random", "grid", "sobol", "tpe", "cmaes", "gp", "evolution")
PEERS = ("optuna_tpe", "optuna_random")


@dataclass(frozen=True)
class Problem:
    name: str
    space: tuple[Parameter, ...]
    objective: Objective
    optimum: float
    f: Callable[[dict[str, Any]], float]
    optuna_config: Callable[[Any], dict[str, Any]]  # define-by-run, as an Optuna user writes it

    def regret(self, best: float) -> float:
        return self.optimum - best if self.objective.mode == "max" else best - self.optimum


def branin(c: dict[str, Any]) -> float:
    x1, x2 = c["x1"], c["x2"]
    b, cc, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + cc * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


_H_ALPHA = (1.0, 1.2, 3.0, 3.2)
_H_A = ((10, 3, 17, 3.5, 1.7, 8), (0.05, 10, 17, 0.1, 8, 14), (3, 3.5, 1.7, 10, 17, 8), (17, 8, 0.05, 10, 0.1, 14))
_H_P = (
    (0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886),
    (0.2329, 0.4135, 0.8307, 0.3736, 0.1004, 0.9991),
    (0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650),
    (0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381),
)


def hartmann6(c: dict[str, Any]) -> float:
    x = [c[f"x{j}"] for j in range(1, 7)]
    return sum(
        alpha * math.exp(-sum(a * (xj - p) ** 2 for a, xj, p in zip(row, x, prow, strict=True)))
        for alpha, row, prow in zip(_H_ALPHA, _H_A, _H_P, strict=True)
    )


def conditional(c: dict[str, Any]) -> float:
    """A training-like loss: each optimizer its own learning-rate scale, sgd via lr / (1 - momentum)."""
    decay, dropout = math.log10(c["weight_decay"]), c["dropout"]
    if c["optimizer"] == "sgd":
        effective = math.log10(c["lr"] / (1.0 - c["momentum"]))
        return 0.1 + 0.5 * effective**2 + 0.1 * (decay + 4.0) ** 2 + (dropout - 0.2) ** 2
    return 0.5 * (math.log10(c["lr"]) + 3.0) ** 2 + 0.1 * (decay + 5.0) ** 2 + 2.0 * (dropout - 0.1) ** 2


def _branin_optuna(trial: Any) -> dict[str, Any]:
    return {"x1": trial.suggest_float("x1", -5.0, 10.0), "x2": trial.suggest_float("x2", 0.0, 15.0)}


def _hartmann_optuna(trial: Any) -> dict[str, Any]:
    return {f"x{j}": trial.suggest_float(f"x{j}", 0.0, 1.0) for j in range(1, 7)}


def _conditional_optuna(trial: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"optimizer": trial.suggest_categorical("optimizer", ["sgd", "adam"])}
    if c["optimizer"] == "sgd":
        c["lr"] = trial.suggest_float("lr_sgd", 1e-3, 1.0, log=True)
        c["momentum"] = trial.suggest_float("momentum", 0.0, 0.99)
    else:
        c["lr"] = trial.suggest_float("lr_adam", 1e-5, 1e-1, log=True)
    c["weight_decay"] = trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    c["dropout"] = trial.suggest_float("dropout", 0.0, 0.5)
    return c


SGD, ADAM = Condition("optimizer", ("sgd",)), Condition("optimizer", ("adam",))
PROBLEMS = (
    Problem(
        "branin",
        (Parameter("x1", FloatRange(-5.0, 10.0)), Parameter("x2", FloatRange(0.0, 15.0))),
        Objective("value", "min"),
        0.397887357729738,
        branin,
        _branin_optuna,
    ),
    Problem(
        "hartmann6",
        tuple(Parameter(f"x{j}", FloatRange(0.0, 1.0)) for j in range(1, 7)),
        Objective("value", "max"),
        3.32236801141551,
        hartmann6,
        _hartmann_optuna,
    ),
    Problem(
        "conditional",
        (
            Parameter("optimizer", Choice(("sgd", "adam"))),
            Parameter("lr", FloatRange(1e-3, 1.0, log=True), SGD),
            Parameter("lr", FloatRange(1e-5, 1e-1, log=True), ADAM),
            Parameter("momentum", FloatRange(0.0, 0.99), SGD),
            Parameter("weight_decay", FloatRange(1e-6, 1e-2, log=True)),
            Parameter("dropout", FloatRange(0.0, 0.5)),
        ),
        Objective("value", "min"),
        0.0,
        conditional,
        _conditional_optuna,
    ),
)


def _drive(
    suggest: Callable[[int], Any], observe: Callable[[int, Any], float], problem: Problem, trials: int, concurrency: int
) -> float:
    """Run `trials` trials with up to `concurrency` pending; the best value's regret."""
    pending: deque[tuple[int, Any]] = deque()
    best: float | None = None
    next_id = 1
    while True:
        while len(pending) < concurrency and next_id <= trials:
            handle = suggest(next_id)
            if handle is None:  # exhausted (grid)
                next_id = trials + 1
                break
            pending.append((next_id, handle))
            next_id += 1
        if not pending:
            break
        trial_id, handle = pending.popleft()
        value = observe(trial_id, handle)
        if best is None or problem.objective.better(value, best):
            best = value
    assert best is not None
    return problem.regret(best)


def run_ours(
    reg: PluginRegistry, name: str, options: dict[str, Any], problem: Problem, seed: int, trials: int, concurrency: int
) -> float:
    searcher = reg.create("searcher", name, options, space=problem.space, objective=problem.objective, seed=seed)

    def observe(trial_id: int, config: dict[str, Any]) -> float:
        value = problem.f(config)
        searcher.observe(trial_id, "COMPLETED", value)
        return value

    return _drive(searcher.suggest, observe, problem, trials, concurrency)


def run_optuna(name: str, problem: Problem, seed: int, trials: int, concurrency: int) -> float:
    import optuna

    sampler = optuna.samplers.TPESampler(seed=seed) if name == "optuna_tpe" else optuna.samplers.RandomSampler(seed)
    direction = "maximize" if problem.objective.mode == "max" else "minimize"
    study = optuna.create_study(direction=direction, sampler=sampler)

    def suggest(_: int) -> Any:
        trial = study.ask()
        return trial, problem.optuna_config(trial)

    def observe(_: int, handle: Any) -> float:
        trial, config = handle
        value = problem.f(config)
        study.tell(trial, value)
        return value

    return _drive(suggest, observe, problem, trials, concurrency)


def _options(name: str, problem: Problem, trials: int, extra: dict[str, dict[str, Any]]) -> dict[str, Any]:
    options = dict(extra.get(name, {}))
    if name == "grid" and "num_points" not in options:  # a grid about the size of the budget
        dims = len({p.name for p in problem.space})
        options["num_points"] = max(2, int(trials ** (1 / dims) + 1e-9))
    return options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds per method and function (default 10)")
    parser.add_argument("--trials", type=int, default=50, help="trials per run (default 50)")
    parser.add_argument("--concurrency", type=int, default=1, help="trials pending at once (default 1)")
    parser.add_argument("--quick", action="store_true", help="3 seeds x 30 trials")
    parser.add_argument("--methods", default=",".join(OURS + PEERS), help="comma-separated subset to run")
    parser.add_argument("--functions", default=",".join(p.name for p in PROBLEMS), help="comma-separated subset")
    parser.add_argument("--searcher-options", default="{}", help='JSON, e.g. \'{"tpe": {"startup": "sobol"}}\'')
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.trials = 3, 30
    methods = [m for m in args.methods.split(",") if m]
    problems = [p for p in PROBLEMS if p.name in args.functions.split(",")]
    extra = json.loads(args.searcher_options)
    for m in ("optuna_tpe", "optuna_random"):
        if m not in methods:
            methods.append(m)  # the peers always run: the target is relative to them
    warnings.simplefilter("ignore")  # Optuna's experimental-feature warnings
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    reg = PluginRegistry.load(entry_points=False)

    regrets: dict[str, dict[str, list[float]]] = {m: {p.name: [] for p in problems} for m in methods}
    seconds: dict[str, float] = dict.fromkeys(methods, 0.0)
    print(f"search quality: {args.seeds} seeds x {args.trials} trials, concurrency {args.concurrency}", flush=True)
    for problem in problems:
        for method in methods:
            start = time.perf_counter()
            for seed in range(args.seeds):
                if method in PEERS:
                    r = run_optuna(method, problem, seed, args.trials, args.concurrency)
                else:
                    options = _options(method, problem, args.trials, extra)
                    r = run_ours(reg, method, options, problem, seed, args.trials, args.concurrency)
                regrets[method][problem.name].append(r)
            seconds[method] += time.perf_counter() - start
            done = statistics.median(regrets[method][problem.name])
            print(f"  {problem.name:<12} {method:<14} median regret {done:.4g}", file=sys.stderr, flush=True)

    median = {m: {p: statistics.median(v) for p, v in by_problem.items()} for m, by_problem in regrets.items()}
    names = [p.name for p in problems]
    header = f"| {'method':<14} | " + " | ".join(f"{n:>11}" for n in names) + " | seconds |"
    print(header)
    print("|" + "|".join("-" * (len(cell) + 0) for cell in header.split("|")[1:-1]) + "|")
    for m in methods:
        cells = " | ".join(f"{median[m][n]:>11.4g}" for n in names)
        print(f"| {m:<14} | {cells} | {seconds[m]:>7.1f} |")

    def worst_ratio(m: str) -> float:
        return max((median[m][n] + 1e-12) / (median["optuna_tpe"][n] + 1e-12) for n in names)

    ours = [m for m in methods if m not in PEERS]
    best = min(ours, key=worst_ratio) if ours else None
    summary = {
        "seeds": args.seeds,
        "trials": args.trials,
        "concurrency": args.concurrency,
        "ours_best_method": best,
        "ours_median_regret": median[best] if best else None,
        "optuna_tpe_median_regret": median["optuna_tpe"],
        "optuna_random_median_regret": median["optuna_random"],
        "median_regret": median,
        "target": "ours_best_method median regret <= optuna_tpe median regret on every function",
        "target_met": bool(best) and all(median[best][n] <= median["optuna_tpe"][n] for n in names),
    }
    print(json.dumps(summary, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
