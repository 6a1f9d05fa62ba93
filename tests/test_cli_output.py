"""What the CLI prints around a study: the slots warning, study phases, plugin docs, and `serve` without the extra.

The plugin table is drawn from the real built-in registry's listing; `serve` runs in a real
subprocess whose interpreter cannot import the [server] extra's modules.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from tuneyard.client import load_spec, render
from tuneyard.client.export import slots_warning
from tuneyard.client.extras import SERVER_EXTRA
from tuneyard.client.plugin_table import plugins_table
from tuneyard.v1 import service_pb2 as pb

DIGITS = load_spec(Path(__file__).resolve().parent.parent / "examples" / "digits.yaml")


def _info(*slots: int) -> pb.ServerInfo:
    return pb.ServerInfo(devices=[pb.Device(name=f"cpu:{i}", kind="cpu", slots_total=n) for i, n in enumerate(slots)])


def _text(renderable: object, width: int) -> str:
    console = Console(file=io.StringIO(), width=width, highlight=False)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_a_spec_asking_for_more_trials_at_once_than_the_server_has_slots_is_warned() -> None:
    spec = load_spec({"budget": {"max_trials": 8, "max_concurrent_trials": 4}})
    warning = slots_warning(_info(1, 1), spec)
    assert warning.startswith("max_concurrent_trials is 4 but the server runs at most 2 trials at once")
    assert "cpu:0: 1, cpu:1: 1" in warning and "wait for a slot" in warning
    assert slots_warning(_info(1, 1, 1, 1), spec) == "" and "at most 2" in slots_warning(_info(3, 3), spec)
    two_each = load_spec({"budget": {"max_concurrent_trials": 2}, "resources": {"gpus_per_trial": 2}})
    assert "at most 1 trial at once" in slots_warning(_info(4, 1, 1), two_each)  # 3 devices, 2 per trial
    packed = load_spec({"budget": {"max_concurrent_trials": 4}, "resources": {"gpus_per_trial": 0.25}})
    assert slots_warning(_info(4), packed) == "" and "at most 3" in slots_warning(_info(2, 1), packed)
    external = load_spec({"external": {}, "budget": {"max_concurrent_trials": 16}})
    assert slots_warning(_info(1), external) == ""  # its trials run on the clients


def test_studies_table_says_what_a_study_waits_on_and_names_the_objectives() -> None:
    queued = pb.Study(study_id="q", spec=DIGITS, state=pb.STUDY_PENDING)
    waiting = pb.Study(study_id="w", spec=DIGITS, state=pb.STUDY_RUNNING)
    testing = pb.Study(study_id="t", spec=DIGITS, state=pb.STUDY_RUNNING)
    testing.trial_counts.completed = 8
    testing.best_trial.objective_value = 0.97
    running = pb.Study(study_id="r", spec=DIGITS, state=pb.STUDY_RUNNING)
    running.trial_counts.running = 2
    assert [render.study_phase(s) for s in (queued, waiting, testing, running)] == [
        "PENDING (queued)",
        "RUNNING (waiting for a slot)",
        "RUNNING (test evaluation)",
        "RUNNING",
    ]
    text = _text(render.studies_table([queued, testing]), 200)
    assert "PENDING (queued)" in text and "val_accuracy=0.9700" in text and "8/8" in text


def test_plugins_table_shows_every_option_doc_wrapped_on_words_at_80_columns() -> None:
    from tuneyard.plugins.manager import PluginRegistry
    from tuneyard.server.api import convert

    registry = PluginRegistry.load(entry_points=False)
    plugins = [convert.plugin_to_proto(e) for e in registry.entries(None) if e.name in ("adam", "simple_cnn")]
    text = _text(plugins_table(pb.ListPluginsResponse(plugins=plugins)), 80)
    assert all(len(line) <= 80 for line in text.splitlines())
    cells = " ".join(re.findall(r"│([^│]*)│\s*$", text, flags=re.M))  # the description-and-options column
    words = cells.split()
    assert "lr:float=0.001" in words  # an option's name, type and default stay whole
    for plugin in plugins:
        for param in plugin.parameters:
            assert param.doc and " ".join(param.doc.split()) in " ".join(words), param.name  # no word cut or lost


BLOCKED_SERVE = """
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "grpc_health", "grpc_reflection", "pluggy"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Blocked())
from tuneyard.client.cli import main
sys.exit(main(["serve", "--port", "0", "--data-dir", sys.argv[1]]))
"""


def test_serve_without_the_server_extra_says_how_to_get_it_not_a_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED_SERVE, str(tmp_path / "data")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert SERVER_EXTRA in done.stderr and "torch" in done.stderr and "grpc_health" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data").exists()  # refused before anything started
