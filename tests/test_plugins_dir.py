"""`tuneyard serve --plugins-dir DIR`: every `*.py` in DIR is a plugin module, in the server and in its workers.

The end-to-end test runs a real `tuneyard serve` subprocess whose only knowledge of the model is a file in
the folder; the study completes, so its worker processes loaded the same file (they build the model).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support import REPO, ServerProcess, tiny_spec, to_proto, watch_all

from tuneyard.plugins.manager import PluginRegistry
from tuneyard.v1 import service_pb2 as pb

MODEL_FILE = '''
"""A user's model, dropped into the plugins folder."""
from tuneyard.plugins import hookimpl


def folder_mlp(*, input_shape: tuple[int, ...], num_classes: int, width: int = 32):
    """A two-layer perceptron: the folder's own model."""
    from torch import nn

    features = 1
    for size in input_shape:
        features *= size
    return nn.Sequential(nn.Flatten(), nn.Linear(features, width), nn.ReLU(), nn.Linear(width, num_classes))


@hookimpl
def tuneyard_register_models(register):
    register("folder_mlp", folder_mlp)
'''


def plugins_folder(tmp_path: Path, **files: str) -> Path:
    folder = tmp_path / "my-plugins"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_every_py_file_registers_its_plugins_and_a_broken_one_is_reported_by_file_name(tmp_path: Path) -> None:
    folder = plugins_folder(
        tmp_path, **{"models.py": MODEL_FILE, "broken.py": "def oops(:\n", "notes.txt": "not python"}
    )
    registry = PluginRegistry.load(entry_points=False, plugins_dir=str(folder))
    entry = registry.get("model", "folder_mlp")
    assert [p.name for p in entry.parameters] == ["width"] and entry.distribution == "plugins-dir"
    [error] = registry.errors
    assert error.source == "broken.py" and "SyntaxError" in error.message
    assert str(folder) not in error.message  # the server's paths stay on the server


def test_a_missing_folder_is_a_load_error_not_a_crash(tmp_path: Path) -> None:
    registry = PluginRegistry.load(entry_points=False, plugins_dir=str(tmp_path / "gone"))
    assert [e.source for e in registry.errors] == ["plugins-dir"]
    assert "does not exist" in registry.errors[0].message and str(tmp_path) not in registry.errors[0].message


def test_serve_trains_a_study_on_a_model_from_the_plugins_folder(tmp_path: Path) -> None:
    folder = plugins_folder(tmp_path, **{"models.py": MODEL_FILE})
    server = ServerProcess(tmp_path / "data", "--plugins-dir", str(folder))
    try:
        stub = server.stub()
        listed = stub.ListPlugins(pb.ListPluginsRequest(kind="model"))
        assert "folder_mlp" in [p.name for p in listed.plugins] and not listed.load_errors
        spec = tiny_spec(
            model={"name": "folder_mlp", "options": {"width": 16}},
            search_space=[{"name": "model.width", "choice": {"values": [8, 16]}}],
            training={"epochs": 2, "batch_size": 64, "optimizer": {"name": "adam", "options": {"lr": 0.01}}, "seed": 0},
        )
        study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)))
        watch_all(stub, study.study_id)
        done = stub.GetStudy(pb.GetStudyRequest(study_id=study.study_id))
        assert done.state == pb.STUDY_COMPLETED, done.error
        assert done.trial_counts.completed == 2 and done.test_metrics["test_accuracy"] > 0.5
    finally:
        assert server.stop() == 0


def test_serve_refuses_a_plugins_dir_that_is_not_a_folder_in_one_line(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "tuneyard.client.cli", "serve", "--port", "0", "--data-dir", str(tmp_path / "d")]
    proc = subprocess.run(
        [*cmd, "--plugins-dir", str(tmp_path / "nowhere")], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: --plugins-dir {tmp_path / 'nowhere'}: not a directory"]


def test_run_local_trains_a_spec_on_an_in_process_server_with_the_plugins_folder(tmp_path: Path) -> None:
    folder = plugins_folder(tmp_path, **{"models.py": MODEL_FILE})
    spec = tiny_spec(
        name="local-run",
        model={"name": "folder_mlp", "options": {"width": 16}},
        search_space=[],
        training={"epochs": 1, "batch_size": 64, "optimizer": {"name": "adam", "options": {"lr": 0.01}}, "seed": 0},
        budget={"max_trials": 1, "max_concurrent_trials": 1},
    )
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "tuneyard.client.cli", "run", str(spec_file), "--local", "--no-progress"]
    proc = subprocess.run(
        [*cmd, "--plugins-dir", str(folder), "--cpu-slots", "1", "--data-dir", str(tmp_path / "data")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    printed = " ".join(proc.stdout.split())  # the console wraps long lines
    assert "tuneyard run: server at 127.0.0.1:" in printed and f"data in {tmp_path / 'data'}" in printed
    assert "COMPLETED" in printed and "test_accuracy:" in printed  # it trained, on the folder's model


def test_run_refuses_local_only_flags_without_local(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(tiny_spec()))
    proc = subprocess.run(
        [sys.executable, "-m", "tuneyard.client.cli", "run", str(spec_file), "--plugins-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        proc.returncode == 2
        and proc.stderr.strip() == "error: --plugins-dir, --data-dir and --cpu-slots go with --local"
    )
