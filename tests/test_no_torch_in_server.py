"""Issue 14's rule: the server process imports no torch; only server/worker/ does, inside worker processes.

A real server starts in a fresh interpreter (so nothing this test session imported can hide an
import) with the default `--devices`, so it also looks for GPUs (in a child interpreter), runs a
tiny real study per searcher and early stopper that runs in the server (all but `sobol`, which
draws from torch's Sobol engine, and `gp`, Optuna's torch-based GP) to completion through the SDK,
and then reports which torch modules its own `sys.modules` holds. A finder placed first on
`sys.meta_path` records which `tuneyard` modules were on the stack when torch was first looked up,
so a failure names the importer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from support import REPO, tiny_spec

from tuneyard.v1 import service_pb2 as pb

PROBE = """
import json, sys
from pathlib import Path

importers = []  # the tuneyard modules on the stack when torch was first looked up


class FirstTorchLookup:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "torchvision") and not importers:
            frame = sys._getframe()
            while frame is not None:
                module = frame.f_globals.get("__name__", "")
                if module.startswith("tuneyard.") and module not in importers:
                    importers.append(module)
                frame = frame.f_back
            importers.append(name)
        return None  # the ordinary finders go on to import it


sys.meta_path.insert(0, FirstTorchLookup())

from tuneyard.client import Client
from tuneyard.server.app import start_server

data_dir, specs = Path(sys.argv[1]), json.loads(sys.argv[2])
handle = start_server(data_dir=data_dir, port=0, cpu_slots=1)  # default devices: GPUs are looked for too
try:
    with Client(handle.address, timeout=60) as client:
        studies = [client.run(spec).study for spec in specs]
finally:
    handle.stop()
print(json.dumps({
    "studies": [
        {"name": s.spec.name, "state": s.state, "completed": s.trial_counts.completed, "epochs": s.epochs_spent}
        for s in studies
    ],
    "torch_modules": sorted(m for m in sys.modules if m.partition(".")[0] in ("torch", "torchvision")),
    "first_torch_lookup": importers,
}))
"""


def _spec(searcher: str, stopper: str | None = None) -> dict[str, Any]:
    spec = tiny_spec(
        name=f"no-torch-{searcher}-{stopper or 'none'}",
        training={"epochs": 1, "batch_size": 128, "optimizer": {"name": "sgd"}, "seed": 0},
        search_space=[{"name": "optimizer.lr", "float_range": {"low": 0.01, "high": 0.1, "log": True}}],
        searcher={"name": searcher},
        budget={"max_trials": 1, "max_concurrent_trials": 1},
    )
    if stopper:
        spec["early_stopping"] = {"name": stopper}
    return spec


# Every searcher and early stopper the server itself runs, but `sobol` and `gp` (see the module docstring).
SPECS = [
    _spec("random"),
    _spec("grid", "median"),
    _spec("tpe", "asha"),
    _spec("cmaes", "hyperband"),
    _spec("evolution"),
]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What the probe server said once its studies had ended and it had stopped."""
    data_dir = tmp_path_factory.mktemp("no-torch-server")
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(data_dir), json.dumps(SPECS)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_the_probe_studies_really_trained_in_worker_processes(report: dict[str, Any]) -> None:
    assert [s["name"] for s in report["studies"]] == [s["name"] for s in SPECS]
    for study in report["studies"]:
        assert study["state"] == pb.STUDY_COMPLETED, study
        assert study["completed"] == 1 and study["epochs"] == 1, study


def test_the_server_process_imports_no_torch(report: dict[str, Any]) -> None:
    torch = report["torch_modules"]
    assert not torch, f"{len(torch)} torch modules loaded; the first lookup came through {report['first_torch_lookup']}"
