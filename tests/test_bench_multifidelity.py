"""bench/multifidelity.py runs end to end on a tiny budget and ends with its JSON line: every method's
median regret per problem, every run spending exactly its step budget (this checks that the benchmark
works, never how well any method searches)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support import REPO

pytestmark = [pytest.mark.timeout(180), pytest.mark.bench]  # `make test-bench`

METHODS = {"bohb", "bohb_hyperband", "random_asha", "optuna_tpe_hyperband"}


def test_the_multifidelity_benchmark_runs_every_method_on_the_same_step_budget() -> None:
    command = [sys.executable, str(REPO / "bench" / "multifidelity.py"), "--seeds", "2", "--full-trials", "3"]
    run = subprocess.run(
        [*command, "--problems", "branin,conditional"], capture_output=True, text=True, timeout=180, cwd=REPO
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(result["median_regret"]) == METHODS
    for method, by_problem in result["median_regret"].items():
        assert set(by_problem) == {"branin", "conditional"}, method
        assert all(0 <= regret < float("inf") for regret in by_problem.values()), method
    runs = result["runs"]
    assert len(runs) == len(METHODS) * 2 * 2  # methods x problems x seeds
    for r in runs:
        assert r["steps"] == 3 * 27, r  # the whole budget, and no step more
        assert 1 <= r["full"] <= r["trials"], r
    assert set(result["target_met"]) == {"branin", "conditional"}
    assert "| bohb " in run.stdout and "| optuna_tpe_hyperband " in run.stdout  # the table's rows
