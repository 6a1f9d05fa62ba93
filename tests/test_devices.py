"""`plan_devices`: `--devices` into devices, with the GPUs learnt from a child interpreter, never in-process.

The probe is a real `sys.executable -c` child each time; only its script is swapped to stand in for
GPUs this machine may not have, or for a probe that dies or hangs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support import REPO

from tuneyard.server.execution import devices
from tuneyard.server.execution.devices import DeviceProbeError, plan_devices

TWO_GPUS = 'print(\'[["Fake GPU A", 1024], ["Fake GPU B", 2048]]\')'


def test_the_real_probe_answers_without_importing_torch_in_this_process() -> None:
    script = (
        "import json, sys\n"
        "from tuneyard.server.execution.devices import _cuda, plan_devices\n"
        "found, planned = _cuda(), plan_devices(None, 1)\n"
        "print(json.dumps([found, [d.kind for d in planned], 'torch' in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    found, kinds, torch_loaded = json.loads(done.stdout.splitlines()[-1])
    assert not torch_loaded
    assert all(isinstance(name, str) and isinstance(memory, int) for name, memory in found)
    assert kinds == (["cuda"] * len(found) if found else ["cpu"])


def test_cpu_never_asks_for_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "_PROBE", "raise SystemExit(9)")  # would fail if it ran
    planned = plan_devices("cpu", 3)
    assert [(d.name, d.kind, d.torch_device, d.cuda_visible) for d in planned] == [
        (f"cpu:{i}", "cpu", "cpu", "") for i in range(3)
    ]


def test_gpus_listed_by_the_probe_become_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "_PROBE", TWO_GPUS)
    assert devices._cuda() == [("Fake GPU A", 1024), ("Fake GPU B", 2048)]
    picked = plan_devices("cuda:1", None)
    assert [(d.index, d.name, d.torch_device, d.cuda_visible, d.memory_bytes, d.description) for d in picked] == [
        (0, "cuda:1", "cuda:0", "1", 2048, "Fake GPU B")
    ]
    assert [d.name for d in plan_devices("all", None)] == ["cuda:0", "cuda:1"]
    assert [d.name for d in plan_devices(None, None)] == ["cuda:0", "cuda:1"]
    with pytest.raises(ValueError, match=r"cuda:2 does not exist \(2 CUDA devices visible\)"):
        plan_devices("cuda:0,cuda:2", None)


def test_no_gpu_means_cpu_slots_or_a_refused_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "_PROBE", "print('[]')")
    assert [d.kind for d in plan_devices(None, 2)] == ["cpu", "cpu"]
    with pytest.raises(ValueError, match="no CUDA device is visible"):
        plan_devices("all", None)


def test_a_probe_that_dies_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "_PROBE", "import sys; sys.stderr.write('driver exploded'); sys.exit(3)")
    with pytest.raises(DeviceProbeError, match=r"failed \(exit status 3\): driver exploded"):
        plan_devices(None, None)
    monkeypatch.setattr(devices, "_PROBE", "print('not json')")
    with pytest.raises(DeviceProbeError, match="finding the CUDA devices failed"):
        plan_devices(None, None)


def test_a_probe_that_hangs_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "_PROBE", "import time; time.sleep(60)")
    monkeypatch.setattr(devices, "PROBE_TIMEOUT_S", 0.5)
    with pytest.raises(DeviceProbeError, match="took over 0.5 s; try --devices cpu"):
        plan_devices("all", None)


def test_serve_says_in_one_line_that_the_devices_could_not_be_found(
    monkeypatch: pytest.MonkeyPatch, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tuneyard.server import cli

    monkeypatch.setattr(devices, "_PROBE", "import sys; sys.stderr.write('driver exploded'); sys.exit(3)")
    assert cli.serve_main(["--port", "0", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: finding the CUDA devices failed") and "Traceback" not in err, err
