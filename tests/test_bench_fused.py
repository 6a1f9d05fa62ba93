"""bench/fused.py runs end to end on a tiny configuration and ends with its JSON line: fused groups of 2
against solo runs of the same searched trials, in one process and through a server on two CPU slots (this
checks that the benchmark works and that the members' metrics match their solo runs, never how fast
anything is)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support import REPO

pytestmark = pytest.mark.bench  # `make test-bench`: it checks that the benchmark runs, not the product


def test_the_fused_benchmark_compares_groups_with_solo_runs_and_prints_its_json_line() -> None:
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "fused.py"),
            "--trials",
            "4",
            "--epochs",
            "1",
            "--ks",
            "1,2",
            "--repeat",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    workloads = {"digits simple_cnn", "breast_cancer mlp"}
    assert set(result["speedup_trials_per_s"]) == workloads
    assert set(result["best_k"]) == workloads and set(result["best_k"].values()) <= {1, 2}
    for name in workloads:
        assert result["solo_trials_per_s"][name] > 0
        assert result["server"]["solo_trials_per_s"][name] > 0  # the same studies through a server on 2 slots
        assert result["server"]["best_k"][name] in {1, 2}
        assert result["speedup_trials_per_s"][name] >= 1.0  # the best K is at least as fast as K=1
        by_k = result["max_member_metric_difference_by_k"][f"{name} K=2"]
        assert set(by_k) == {"val_accuracy", "val_loss"}
        assert 0.0 <= result["study_best_val_accuracy_difference"][f"{name} K=2"] < 1e-3
        floor = result["solo_rounding_floor"][name]  # the solo runs again on 2 threads: rounding alone
        assert floor["threads"] == 2 and set(floor["max_difference"]) == {"val_accuracy", "val_loss"}
        assert 0 <= floor["members_off_by_more_than_1e-4"] <= 4
        assert 0.0 <= floor["study_best_val_accuracy_difference"] < 1e-3
    assert 0.0 <= result["max_member_metric_difference"] < 1e-3  # one epoch: members equal their solo runs
    assert isinstance(result["target_met"], bool) and "3.0x" in result["target"]
    assert result["server"]["slots"] == 2 and result["server"]["all_fused"] is True
    assert 0.0 <= result["server"]["max_member_metric_difference"] < 1e-3
    assert isinstance(result["server_target_met"], bool)
    assert run.stdout.count("| digits simple_cnn |  2 |") == 2  # a row of each table
    assert "solo runs on 2 torch threads" in run.stdout
