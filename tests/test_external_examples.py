"""The external-study examples run as users run them, against a real in-process server: the grpcurl
and jq loop (bash), branin.py with the SDK's optimize, and the Node.js client (grpc-js), each as a
subprocess; what they did is then read back from the server with plain stubs."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from support import REPO, grpcurl_binary

from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc

EXAMPLE = REPO / "examples" / "external"
pytestmark = pytest.mark.timeout(120)


def branin(x: float, y: float) -> float:
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (y - b * x**2 + c * x - 6) ** 2 + 10 * (1 - t) * math.cos(x) + 10


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    from tuneyard.server.app import start_server

    handle = start_server(data_dir=tmp_path_factory.mktemp("external-examples"), devices="cpu", cpu_slots=1)
    with grpc.insecure_channel(handle.address) as channel:
        yield handle.address, service_pb2_grpc.TrainingServiceStub(channel)
    handle.stop()


def trials(stub: Any, study_id: str) -> list[pb.Trial]:
    return list(stub.ListTrials(pb.ListTrialsRequest(study_id=study_id, page_size=100)).trials)


def config(trial: pb.Trial) -> dict[str, Any]:
    return json_format.MessageToDict(trial.config)


def assert_branin_study(stub: Any, study_id: str, count: int, best_below: float) -> pb.Study:
    """The study COMPLETED with `count` COMPLETED trials, the best one the least of them, below `best_below`."""
    study = stub.GetStudy(pb.GetStudyRequest(study_id=study_id))
    assert study.state == pb.STUDY_COMPLETED, study.error
    ended = trials(stub, study_id)
    assert len(ended) == count and {t.state for t in ended} == {pb.TRIAL_COMPLETED}
    assert study.best_trial.objective_value == min(t.objective_value for t in ended) < best_below
    return study


def test_the_grpcurl_loop_completes_a_tpe_study_on_branin(server: tuple[str, Any]) -> None:
    address, stub = server
    env = {**os.environ, "PATH": f"{Path(grpcurl_binary()).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", str(EXAMPLE / "grpcurl.sh"), address], capture_output=True, text=True, timeout=90, env=env
    )
    assert proc.returncode == 0, proc.stderr
    study_id = proc.stdout.split()[1]
    study = assert_branin_study(stub, study_id, 20, best_below=5.0)
    assert study.spec.searcher.name == "tpe"
    for trial in trials(stub, study_id):  # jq's Branin is Branin, reported as step 1 and as the end
        value = branin(config(trial)["x"], config(trial)["y"])
        assert trial.objective_value == pytest.approx(value, rel=1e-12)
        assert [(m.epoch, dict(m.values)) for m in trial.metrics] == [(1, {"value": trial.objective_value})]
        assert trial.device.startswith("client:grpcurl-")
    best = study.best_trial
    assert proc.stdout.splitlines()[-1].startswith(f"best trial {best.trial_id}: value {best.objective_value}")


def test_branin_py_optimizes_with_two_workers(server: tuple[str, Any]) -> None:
    address, stub = server
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE / "branin.py"), "--server", address, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    study_id = proc.stdout.split()[1].rstrip(":")
    study = assert_branin_study(stub, study_id, 20, best_below=5.0)
    ended = trials(stub, study_id)
    assert len({t.device for t in ended}) == 1 and ended[0].device.startswith("client:")  # one optimize, one holder
    for trial in ended:
        assert trial.objective_value == pytest.approx(branin(config(trial)["x"], config(trial)["y"]), rel=1e-12)
    assert f"best trial {study.best_trial.trial_id}: value {study.best_trial.objective_value:.6f}" in proc.stdout


def compass(x: float, y: float, steps: int = 3) -> list[tuple[float, float, float]]:
    """client.js's local search from (x, y): each step the best of the point and its 4 neighbours."""
    point, path = (x, y, math.inf), []
    for s in range(1, steps + 1):
        h = 0.5 / 2 ** (s - 1)
        candidates = [(point[0] + dx, point[1] + dy) for dx, dy in ((0, 0), (h, 0), (-h, 0), (0, h), (0, -h))]
        clipped = [(min(10.0, max(-5.0, cx)), min(15.0, max(0.0, cy))) for cx, cy in candidates]
        point = min(((cx, cy, branin(cx, cy)) for cx, cy in clipped), key=lambda p: p[2])
        path.append(point)
    return path


def node_env(tmp_path: Path) -> dict[str, str]:
    """The environment that finds the example's packages: its node_modules, else `npm ci` into tmp_path."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed")
    folder = EXAMPLE / "node"
    if (folder / "node_modules").is_dir():
        return dict(os.environ)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(folder / name, tmp_path / name)
    proc = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=tmp_path, capture_output=True, text=True)
    if proc.returncode != 0:
        offline = any(code in proc.stderr for code in ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ETIMEDOUT"))
        if offline:
            pytest.skip(f"npm ci cannot reach the registry: {proc.stderr.strip().splitlines()[-1]}")
        pytest.fail(f"npm ci failed:\n{proc.stderr}")
    return {**os.environ, "NODE_PATH": str(tmp_path / "node_modules")}


def test_the_node_client_evaluates_a_study_with_two_loops(server: tuple[str, Any], tmp_path: Path) -> None:
    address, stub = server
    env = node_env(tmp_path)
    proc = subprocess.run(
        ["node", str(EXAMPLE / "node" / "client.js"), address, "10"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    study = assert_branin_study(stub, result["study_id"], 10, best_below=100.0)
    # What client.js built reached the server: a Struct of options, a Duration, an int64 as a string.
    assert json_format.MessageToDict(study.spec.searcher.options) == {"n_startup_trials": 5}
    assert study.spec.external.lease.seconds == 60 and study.spec.training.epochs == 3
    assert result["state"] == "STUDY_COMPLETED" and result["epochs_spent"] == str(study.epochs_spent) == "30"
    ended = trials(stub, result["study_id"])
    assert len({t.device for t in ended}) == 2  # both loops evaluated trials
    for trial in ended:  # the config came back out of its Struct: Node computed what Python does
        path = compass(config(trial)["x"], config(trial)["y"])
        stored = [(m.epoch, m.values["value"], m.values["x"], m.values["y"]) for m in trial.metrics]
        expected = [(s, pytest.approx(v), pytest.approx(x), pytest.approx(y)) for s, (x, y, v) in enumerate(path, 1)]
        assert stored == expected
        assert trial.objective_value == pytest.approx(path[-1][2])
    best = study.best_trial
    assert result["best"] == {"trial_id": best.trial_id, "value": best.objective_value, "config": config(best)}
