"""The Ray executor on a real Ray cluster confined to loopback: a study runs to the end, a killed
Ray worker is retried like a local one, the same seed gives the same configurations on both
executors, and a two-node cluster (head and worker, both on 127.0.0.1) shows up and runs trials.

This is also the tested recipe of the README's "Scaling out" section.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import REPO, ServerProcess, tiny_spec, to_proto, watch_all

from tuneyard.server.execution.gang import free_port
from tuneyard.v1 import service_pb2 as pb

# Ray's servers listen on every interface unless told otherwise; this keeps them on 127.0.0.1. It
# must be set before Ray is imported (here, and in every process that starts Ray).
# Ray's token authentication, with a token of this test run's own, for every Ray process and client.
RAY_TOKEN = secrets.token_hex(16)
os.environ.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=RAY_TOKEN)
if importlib.util.find_spec("ray") is None:
    pytest.skip("the Ray executor needs the [ray] extra", allow_module_level=True)

RAY = str(Path(sys.executable).parent / "ray")
FAULTS = str(REPO / "tests" / "fault_plugins")
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "token",
    "RAY_AUTH_TOKEN": RAY_TOKEN,
    "RAY_USAGE_STATS_ENABLED": "0",
    "PYTHONPATH": FAULTS,
}


LOOPBACK = re.compile(r"(127\.0\.0\.1|\[::1\]|\[::ffff:127\.0\.0\.1\]):")


def ray(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **RAY_ENV)
    proc = subprocess.run([RAY, *args], capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


class RayCluster:
    """`ray start --head` (and `ray start --address` for more nodes), all on 127.0.0.1."""

    def __init__(self, cpus: int) -> None:
        self.port = free_port()
        self.temp = Path(f"/tmp/ty-ray-{uuid.uuid4().hex[:6]}")  # short: Ray's socket paths have a length limit
        ray(
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={self.port}",
            f"--num-cpus={cpus}",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={self.temp}",
        )
        self.address = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        ray("stop", "--force")
        shutil.rmtree(self.temp, ignore_errors=True)


RAY_PROCESSES = (
    "raylet",
    "gcs_server",
    "ray::",
    "default_worker",
    "dashboard",
    "log_monitor",
    "runtime_env",
    "ray_client",
)


def ray_listeners() -> list[str]:
    """Local addresses that Ray's processes listen on: from `ss -ltnp`, or from /proc where `ss` is missing."""
    if shutil.which("ss"):
        out = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
        return [line.split()[3] for line in out.splitlines()[1:] if any(n in line for n in RAY_PROCESSES)]
    return _proc_listeners()


def _proc_listeners() -> list[str]:
    """The same from /proc: LISTEN sockets of /proc/net/tcp{,6} owned by a process with a Ray name."""
    inodes: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                hex_ip, hex_port = fields[1].split(":")
                loopback = ("0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F")
                ip = "127.0.0.1" if hex_ip in loopback else hex_ip
                inodes[fields[9]] = f"{ip}:{int(hex_port, 16)}"
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if not any(n in cmdline for n in RAY_PROCESSES):
                continue
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    found.append(inodes[target[8:-1]])
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    head = RayCluster(cpus=2)
    yield head
    head.stop()


@pytest.fixture(scope="module")
def ray_server(cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    shared = tmp_path_factory.mktemp("shared-checkpoints")
    proc = ServerProcess(
        tmp_path_factory.mktemp("ray-store"),
        "--executor",
        "ray",
        "--ray-address",
        cluster.address,
        "--checkpoint-dir",
        str(shared),
        "--cpu-slots",
        "2",
        "--trial-heartbeat-timeout",
        "60",
        "--plugins-dir",
        str(REPO / "tests" / "trainable_plugins"),
        env=RAY_ENV,
    )
    yield proc
    assert proc.stop() == 0


def seeded_spec() -> dict[str, Any]:
    return tiny_spec(
        training={"epochs": 1, "batch_size": 128, "optimizer": {"name": "adam"}, "seed": 3},
        search_space=[
            {"name": "model.num_conv_layers", "int_range": {"low": 1, "high": 3}},
            {"name": "optimizer.lr", "float_range": {"low": 1e-3, "high": 1e-1, "log": True}},
        ],
        budget={"max_trials": 3, "max_concurrent_trials": 2},
    )


def run(stub: Any, spec: dict[str, Any]) -> tuple[pb.Study, list[pb.Trial]]:
    study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)))
    watch_all(stub, study.study_id)
    trials = list(stub.ListTrials(pb.ListTrialsRequest(study_id=study.study_id)).trials)
    return stub.GetStudy(pb.GetStudyRequest(study_id=study.study_id)), trials


def configs(trials: list[pb.Trial]) -> list[dict[str, Any]]:
    return [dict(t.config) for t in sorted(trials, key=lambda t: t.trial_id)]


def test_study_runs_on_ray_like_on_the_local_executor(ray_server, stub):
    ray_stub = ray_server.stub()
    info = ray_stub.GetServerInfo(pb.GetServerInfoRequest())
    assert info.executor == "ray" and len(info.devices) == 2
    assert info.nodes and all(n.address == "127.0.0.1" and n.alive for n in info.nodes)
    on_ray, ray_trials = run(ray_stub, seeded_spec())
    assert on_ray.state == pb.STUDY_COMPLETED, on_ray.error
    assert "test_accuracy" in on_ray.test_metrics
    assert all(t.state == pb.TRIAL_COMPLETED and t.device.startswith("ray:") for t in ray_trials)
    local, local_trials = run(stub, seeded_spec())  # the session's local-executor server
    assert configs(ray_trials) == configs(local_trials)  # same seed, same configurations
    assert not [a for a in ray_listeners() if not LOOPBACK.match(a)]
    from_proc = _proc_listeners()  # the fallback where `ss` is missing agrees with it
    assert len(from_proc) == len(ray_listeners()) and not [a for a in from_proc if not LOOPBACK.match(a)]


def test_a_trainable_from_the_plugins_folder_runs_on_ray(ray_server):
    """The Ray actors load the server's plugins folder, so a user's trainable trains there too."""
    spec = {
        "trainable": {"name": "bowl"},
        "training": {"epochs": 2, "seed": 0},
        "search_space": [{"name": "trainable.x", "choice": {"values": [1.0, 3.0]}}],
        "searcher": {"name": "grid"},
        "objective": {"metric": "loss", "mode": "MINIMIZE"},
        "budget": {"max_trials": 2, "max_concurrent_trials": 2},
    }
    study, trials = run(ray_server.stub(), spec)
    assert study.state == pb.STUDY_COMPLETED, study.error
    assert all(t.state == pb.TRIAL_COMPLETED and t.device.startswith("ray:") for t in trials)
    losses = {dict(t.config)["trainable.x"]: t.final_metrics["loss"] for t in trials}
    assert losses == {1.0: pytest.approx(4.5), 3.0: pytest.approx(0.5)}
    assert study.best_trial.final_metrics["x"] == 3.0


def actor_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "ray::TrialActor"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_killed_ray_worker_is_retried_from_its_checkpoint(ray_server):
    stub = ray_server.stub()
    spec = tiny_spec(
        model={"name": "faulty", "options": {"epoch_sleep": 0.5}},
        training={"epochs": 4, "batch_size": 256, "optimizer": {"name": "adam"}, "seed": 0},
        search_space=[],
        budget={"max_trials": 1, "trial_retries": 1},
    )
    study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        trials = stub.ListTrials(pb.ListTrialsRequest(study_id=study.study_id)).trials
        if trials and trials[0].epochs_completed >= 1:
            break
        time.sleep(0.1)
    busy = [pid for pid in actor_pids() if "TrialActor.run" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]
    assert busy, "no Ray actor is running the trial"
    for pid in busy:
        os.kill(pid, signal.SIGKILL)
    watch_all(stub, study.study_id)
    trial = stub.GetTrial(pb.GetTrialRequest(study_id=study.study_id, trial_id=1))
    assert trial.state == pb.TRIAL_COMPLETED and trial.retries == 1
    assert trial.epochs_completed == 4 and [m.epoch for m in trial.metrics] == [1, 2, 3, 4]


def test_two_node_cluster_on_loopback(tmp_path):
    """A head node and a worker node, both on 127.0.0.1, then `tuneyard serve --executor ray`.

    Ray's CLI will not add a second node to a loopback-only head (it refuses, or rewrites
    127.0.0.1 to the machine's network address), so the test builds the two nodes with Ray's own
    one-machine cluster helper; on real machines the README's `ray start` commands do the same.
    """
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        proc = ServerProcess(
            tmp_path / "store",
            "--executor",
            "ray",
            "--ray-address",
            cluster.address,
            "--checkpoint-dir",
            str(tmp_path / "shared"),
            "--cpu-slots",
            "3",
            env=RAY_ENV,
        )
        try:
            stub = proc.stub()
            nodes = [n for n in stub.GetServerInfo(pb.GetServerInfoRequest()).nodes if n.alive]
            assert len(nodes) == 2 and {n.address for n in nodes} == {"127.0.0.1"}
            spec = seeded_spec()
            spec["budget"]["max_concurrent_trials"] = 3
            study, trials = run(stub, spec)
            assert study.state == pb.STUDY_COMPLETED, (study.error, [t.error for t in trials])
            assert len(trials) == 3
            assert not [a for a in ray_listeners() if not LOOPBACK.match(a)]
        finally:
            assert proc.stop() == 0
    finally:
        cluster.shutdown()
