"""Issue 13's hostile inputs and bad days, each against a real `tuneyard serve`: what the server answers.

Run it on this checkout, and on an older one to compare (put that release's package first on
PYTHONPATH; the server subprocesses inherit it):

    .venv/bin/python bench/hardening_probe.py
    PYTHONPATH=/tmp/before/pkg .venv/bin/python bench/hardening_probe.py

Prints one row per case (what was sent or done, what came back) and ends with one JSON line.
Nothing is timed except validation of the large spec, which is quoted, not asserted.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc, spec_pb2

LOOPBACK_CPU_ARGS = ("--port", "0", "--devices", "cpu", "--cpu-slots", "1")  # an ephemeral loopback port, one CPU slot

REPO = Path(__file__).resolve().parents[1]
FAULT_PLUGINS = str(REPO / "tests" / "fault_plugins")
BASE: dict[str, Any] = {
    "name": "probe",
    "dataset": {"name": "digits"},
    "model": {"name": "simple_cnn", "options": {"num_filters": 8}},
    "training": {"epochs": 2, "batch_size": 128, "optimizer": {"name": "adam", "options": {"lr": 0.01}}},
    "searcher": {"name": "random"},
    "objective": {"metric": "val_accuracy", "mode": "MAXIMIZE"},
    "budget": {"max_trials": 1},
}


class Server:
    """A `tuneyard serve` subprocess on a free loopback port, with the fault plugins importable."""

    def __init__(self, data: Path) -> None:
        path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), FAULT_PLUGINS) if p)
        cmd = [sys.executable, "-m", "tuneyard.client.cli", "serve", "--data-dir", str(data), *LOOPBACK_CPU_ARGS]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1"),
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            found = re.search(r"serving on (\S+)", line)
            if found:
                self.stub = service_pb2_grpc.TrainingServiceStub(grpc.insecure_channel(found.group(1)))
                break
        else:
            raise RuntimeError("the server did not start")
        self.proc.stdout.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def spec(**changes: Any) -> spec_pb2.StudySpec:
    body = json.loads(json.dumps(BASE))
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = body
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return json_format.ParseDict(body, spec_pb2.StudySpec())


def call(fn: Any) -> tuple[str, Any]:
    try:
        return "OK", fn()
    except grpc.RpcError as exc:
        return exc.code().name, exc.details()


def wait_end(stub: Any, study_id: str, timeout: float = 300) -> pb.Study:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        study = stub.GetStudy(pb.GetStudyRequest(study_id=study_id))
        if study.state not in (pb.STUDY_PENDING, pb.STUDY_RUNNING):
            return study
        time.sleep(0.2)
    return study


def create_outcome(stub: Any, message: spec_pb2.StudySpec, wait: bool = True) -> str:
    """The CreateStudy status, and for an accepted study how it ended."""
    code, answer = call(lambda: stub.CreateStudy(pb.CreateStudyRequest(spec=message)))
    if code != "OK":
        return f"{code}: {answer[:110]}"
    if not wait:
        return f"OK {answer.study_id}"
    study = wait_end(stub, answer.study_id)
    trials = stub.ListTrials(pb.ListTrialsRequest(study_id=answer.study_id)).trials
    epochs = [t.epochs_completed for t in trials]
    return f"accepted -> {pb.StudyState.Name(study.state)} {study.error[:70]!r} epochs={epochs}"


def searched(name: str, **domain: Any) -> dict[str, Any]:
    return {"search_space": [{"name": name, **domain}]}


def simple_cases(stub: Any) -> list[tuple[str, str, str]]:
    rows = []

    def row(item: str, what: str, outcome: str) -> None:
        rows.append((item, what, outcome))
        print(f"{item:>3}  {what:<46} {outcome}", flush=True)

    row("1", "training.seed 2**63-1", create_outcome(stub, spec(**{"training.seed": str(2**63 - 1)}), wait=False))
    code, _ = call(lambda: stub.ListStudies(pb.ListStudiesRequest()))
    row("1", "  then ListStudies", code)
    code, answer = call(lambda: stub.CreateStudy(pb.CreateStudyRequest(spec=spec(**{"training.seed": str(2**53 + 1)}))))
    row("1", "training.seed 2**53+1 (stored as)", f"{code} {answer.spec.training.seed}" if code == "OK" else code)
    row("5", "gpus_per_trial 2**-20", create_outcome(stub, spec(**{"resources.gpus_per_trial": 2**-20}), wait=False))
    many = [{"name": "model.num_filters", "choice": {"values": [4, 8]}}] + [
        {
            "name": "optimizer.lr",
            "float_range": {"low": 1e-3, "high": 1e-1},
            "condition": {"parent": "model.num_filters", "values": list(range(i * 360, i * 360 + 360))},
        }
        for i in range(999)
    ]
    started = time.perf_counter()
    code, _ = call(
        lambda: stub.CreateStudy(pb.CreateStudyRequest(spec=spec(search_space=many, **{"budget.max_trials": 1})))
    )
    row("5", "999 alternatives x 360 values: CreateStudy", f"{code} in {time.perf_counter() - started:.1f} s")
    for token_number in (2**70, -5):
        token = base64.urlsafe_b64encode(f"r{token_number}".encode()).decode()
        for name, fn in (("ListStudies", stub.ListStudies), ("ListTrials", stub.ListTrials)):
            request = (
                pb.ListStudiesRequest(page_token=token)
                if name == "ListStudies"
                else pb.ListTrialsRequest(study_id="st-000000000000", page_token=token)
            )
            code, answer = call(lambda fn=fn, request=request: fn(request))
            row("6", f"{name} page_token r{token_number if token_number < 0 else '2**70'}", f"{code}")
    cases = {
        "training.seed -1 (the searcher's seed)": {"training.seed": "-1"},
        "training.seed 2**40": {"training.seed": str(2**40), "searcher": {"name": "tpe"}},
        "tpe n_startup_trials -1": {"searcher": {"name": "tpe", "options": {"n_startup_trials": -1}}},
        "grid num_points 0": {
            "searcher": {"name": "grid", "options": {"num_points": 0}},
            "search_space": [{"name": "optimizer.lr", "float_range": {"low": 0.001, "high": 0.1}}],
        },
        "asha grace_period 0": {"early_stopping": {"name": "asha", "options": {"grace_period": 0}}},
        "asha reduction_factor 1": {"early_stopping": {"name": "asha", "options": {"reduction_factor": 1}}},
        "gpu_memory_gb 1e308": {"resources.gpu_memory_gb": 1e308},
        "searched training.epochs [0, 0]": searched("training.epochs", int_range={"low": 0, "high": 0}),
        "searched training.epochs choice [-3]": searched("training.epochs", choice={"values": [-3]}),
        "searched training.precision fp8": searched("training.precision", choice={"values": ["fp8"]}),
        "searched training.data_pipeline gpu": searched("training.data_pipeline", choice={"values": ["gpu"]}),
        "searched grad_accumulation_steps -3": searched("training.grad_accumulation_steps", choice={"values": [-3]}),
    }
    for what, changes in cases.items():
        row("7", what, create_outcome(stub, spec(**changes)))
    return rows


def slow(log_dir: Path, **extra: Any) -> spec_pb2.StudySpec:
    return spec(
        **{
            "model": {"name": "faulty", "options": {"epoch_sleep": 0.3, "epoch_log": str(log_dir)}},
            "training.epochs": 4,
            "training.batch_size": 256,
            "search_space": [{"name": "model.width", "choice": {"values": [1, 2]}}],
            "searcher": {"name": "grid"},
            "budget": {"max_trials": 2, "max_concurrent_trials": 1},
            **extra,
        }
    )


def wait_trials(stub: Any, study_id: str, ready: Any, timeout: float = 180) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready(list(stub.ListTrials(pb.ListTrialsRequest(study_id=study_id)).trials)):
            return True
        time.sleep(0.02)
    return False


def pruned_before_kill(root: Path) -> str:
    """Item 2: the stopper says STOP for trial 1 at epoch 1 (once only); the server is SIGKILLed before the
    trial ends (the stopper stalls the runner there); how trial 1 ends after the restart."""
    data, logs = root / "prune-data", root / "prune-epochs"
    logs.mkdir()
    options = {
        "trial": 1,
        "step": 1,
        "once_marker": str(root / "said-stop"),
        "stall_marker": str(root / "stalled"),
        "stall": 5.0,
    }
    server = Server(data)
    study = server.stub.CreateStudy(
        pb.CreateStudyRequest(spec=slow(logs, early_stopping={"name": "stop_at", "options": options}))
    )
    if not wait_trials(server.stub, study.study_id, lambda ts: (root / "stalled").exists()):
        server.kill()
        return "never reached the moment"
    server.kill()
    server = Server(data)
    wait_end(server.stub, study.study_id)
    trials = server.stub.ListTrials(pb.ListTrialsRequest(study_id=study.study_id)).trials
    best = server.stub.GetStudy(pb.GetStudyRequest(study_id=study.study_id)).best_trial.trial_id
    server.stop()
    first = trials[0]
    return f"trial 1 {pb.TrialState.Name(first.state)} after {first.epochs_completed} epochs; best trial {best}"


def moved_data_dir(root: Path) -> str:
    """Item 4: SIGKILL mid-study, data dir copied elsewhere, the old one removed, restart at the new place."""
    old, new, logs = root / "old-data", root / "moved" / "data", root / "move-epochs"
    logs.mkdir()
    server = Server(old)
    study = server.stub.CreateStudy(pb.CreateStudyRequest(spec=slow(logs)))
    wait_trials(server.stub, study.study_id, lambda ts: len(ts) == 2 and ts[1].epochs_completed >= 1)
    server.kill()
    shutil.copytree(old, new)
    shutil.rmtree(old)
    server = Server(new)
    done = wait_end(server.stub, study.study_id)
    server.stop()
    recreated = " (old dir recreated)" if old.exists() else ""
    return f"{pb.StudyState.Name(done.state)} {done.error[:90]!r}{recreated}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-crashes", action="store_true", help="only the RPC cases")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hardening-probe-"))
    server = Server(root / "data")
    try:
        rows = simple_cases(server.stub)
    finally:
        server.stop()
    if not args.skip_crashes:
        for item, what, probe in (
            ("2", "STOP said, server killed before the trial ended", pruned_before_kill),
            ("4", "data dir moved after a SIGKILL", moved_data_dir),
        ):
            outcome = probe(root)
            rows.append((item, what, outcome))
            print(f"{item:>3}  {what:<46} {outcome}", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"cases": [{"item": i, "case": w, "outcome": o} for i, w, o in rows]}))


if __name__ == "__main__":
    main()
