"""bench/overhead.py runs end to end for tuneyard, the trainable workload included, and ends with its JSON
line (a few trials: this checks that the benchmark works, never how fast anything is)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support import REPO

pytestmark = pytest.mark.bench  # `make test-bench`: it checks that the benchmark runs, not the product


def test_the_overhead_benchmark_measures_the_trainable_path_beside_the_builtin_trainer() -> None:
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "overhead.py"),
            "--systems",
            "tuneyard",
            "--trials",
            "4",
            "--bookkeeping-trials",
            "0",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["tuneyard_overhead_s"]["trivial_trainable"] > 0
    ratio = result["tuneyard_trainable_vs_builtin"]["ratio"]
    assert isinstance(ratio, float) and ratio > 0
    assert "trivial_trainable" in run.stdout  # a row of the table
