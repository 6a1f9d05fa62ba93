"""bench/asktell.py runs end to end on a few trials and ends with its JSON line: every system's row,
every trial stored COMPLETE, latencies and the ratio present (this checks that the benchmark works,
never how fast anything is)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from support import REPO

pytestmark = [pytest.mark.timeout(120), pytest.mark.bench]  # `make test-bench`


def test_the_asktell_benchmark_measures_tuneyard_beside_both_optuna_storages() -> None:
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "asktell.py"),
            "--trials",
            "10",
            "--repeat",
            "1",
            "--searchers",
            "random",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    rows = result["rows"]
    assert set(rows) == {"tuneyard/random", "tuneyard_fsync/random", "optuna_journal/random", "optuna_sqlite/random"}
    for row in rows.values():
        assert row["trials"] == 10 and row["stored_complete"] == 10  # read back from each store
        assert 0 < row["ask_p50_ms"] <= row["ask_p99_ms"]
        if row["tell_p50_ms"] is not None:  # tuneyard tells with the next ask: maybe no call tells alone
            assert 0 < row["tell_p50_ms"] <= row["tell_p99_ms"]
        assert math.isclose(row["trials_per_s"], 10 / row["wall_s"])
        assert row["best"] >= 0  # the quadratic's minimum is 0
    assert rows["optuna_journal/random"]["calls_per_trial"] == 2  # study.ask, study.tell
    assert 0.5 <= rows["tuneyard/random"]["calls_per_trial"] <= 1.2  # a SuggestTrials tells and asks for both workers
    ratio = result["tuneyard_vs_optuna_journal_trials_per_s"]["random"]
    expected = rows["tuneyard/random"]["trials_per_s"] / rows["optuna_journal/random"]["trials_per_s"]
    assert math.isclose(ratio, expected)
    synced = result["tuneyard_fsync_vs_optuna_journal_trials_per_s"]["random"]
    assert math.isclose(
        synced, rows["tuneyard_fsync/random"]["trials_per_s"] / rows["optuna_journal/random"]["trials_per_s"]
    )
    assert result["target_met"] == (ratio >= 1 and synced >= 1)
    assert "| tuneyard " in run.stdout and "| optuna_journal " in run.stdout  # the table's rows
