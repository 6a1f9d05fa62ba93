"""bench/pbt.py runs end to end on the smallest settings and ends with its JSON line: both methods'
median best val/test accuracy in [0, 1] and the epochs each spent, random+ASHA's within a trial of
PBT's (this checks that the benchmark works, never which method wins)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support import REPO

pytestmark = [pytest.mark.timeout(240), pytest.mark.bench]  # `make test-bench`

METHODS = {"pbt", "random_asha"}
EPOCHS = 3


def test_the_pbt_benchmark_compares_both_methods_on_the_same_epochs() -> None:
    command = [sys.executable, str(REPO / "bench" / "pbt.py"), "--seeds", "1", "--trials", "2"]
    run = subprocess.run(
        [*command, "--epochs", str(EPOCHS), "--interval", "1"], capture_output=True, text=True, timeout=240, cwd=REPO
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == "pbt" and result["seeds"] == 1
    for key in ("best_val_accuracy", "test_accuracy", "epochs"):
        assert set(result[key]) == METHODS, key
    for method in METHODS:
        assert 0 <= result["best_val_accuracy"][method] <= 1, method
        assert 0 <= result["test_accuracy"][method] <= 1, method  # digits has a test split
    assert result["epochs"]["pbt"] == 2 * EPOCHS  # the population, every epoch of it
    assert abs(result["epochs"]["random_asha"] - result["epochs"]["pbt"]) <= EPOCHS  # within a trial
    assert {(r["method"], r["seed"]) for r in result["runs"]} == {("pbt", 0), ("random_asha", 0)}
    assert "| pbt " in run.stdout and "| random_asha " in run.stdout  # the table's rows
