"""Argument parsing of the ``tuneyard`` command, ``serve`` forwarding, failure modes, import hygiene."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import types
from pathlib import Path

import grpc
import pytest

from tuneyard.client import Client, TuneyardError
from tuneyard.client.cli import COMMANDS, SERVER_EXTRA, _serve_args, build_parser, main


def test_console_script_help_runs() -> None:
    script = Path(sys.executable).parent / "tuneyard"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for command in ("serve", "run", "watch", "studies", "trials", "trial", "best", "cancel", "plugins", "info", "demo"):
        assert re.search(rf"^\s+{command}\s", done.stdout, re.MULTILINE), command
    assert "--server" in done.stdout


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "spec.yaml"], {"command": "run", "spec": "spec.yaml", "request_id": None, "no_progress": False}),
        (["run", "s.json", "--request-id", "r1", "--no-progress"], {"request_id": "r1", "no_progress": True}),
        (["watch", "abc"], {"command": "watch", "study_id": "abc", "after": 0}),
        (["watch", "abc", "--after", "12"], {"after": 12}),
        (["studies"], {"command": "studies", "state": None}),
        (["studies", "--state", "running"], {"state": "running"}),
        (["trials", "abc"], {"command": "trials", "study_id": "abc"}),
        (["trial", "abc", "3"], {"command": "trial", "study_id": "abc", "trial_id": 3}),
        (["best", "abc"], {"command": "best", "study_id": "abc"}),
        (["cancel", "abc"], {"command": "cancel", "study_id": "abc"}),
        (["plugins"], {"command": "plugins", "kind": ""}),
        (["plugins", "optimizer"], {"kind": "optimizer"}),
        (["info"], {"command": "info", "server": None}),
        (["demo"], {"command": "demo", "data_dir": None, "cpu_slots": None}),
        (["demo", "--data-dir", "/tmp/x", "--cpu-slots", "2"], {"data_dir": Path("/tmp/x"), "cpu_slots": 2}),
    ],
)
def test_subcommands_parse(argv: list[str], expected: dict[str, object]) -> None:
    args = vars(build_parser().parse_args(argv))
    assert {key: args[key] for key in expected} == expected


def test_every_command_is_in_the_readme_command_list() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    listed = set(re.findall(r"^tuneyard ([a-z]+)\b", readme, re.MULTILINE))
    commands = {*COMMANDS, "demo"}  # `serve` has its own section
    assert commands <= listed, sorted(commands - listed)


def test_server_option_before_or_after_the_command() -> None:
    assert build_parser().parse_args(["--server", "h:1", "info"]).server == "h:1"
    assert build_parser().parse_args(["info", "--server", "h:2"]).server == "h:2"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["watch"],
        ["watch", "x", "--after", "soon"],
        ["run"],
        ["info", "extra"],
        ["trial", "x"],
        ["trial", "x", "third"],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage: tuneyard" in capsys.readouterr().err


def test_help_of_a_subcommand_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "--help"])
    assert info.value.code == 0
    assert "--no-progress" in capsys.readouterr().out


def test_serve_args_are_everything_after_serve() -> None:
    assert _serve_args(["serve"]) == []
    assert _serve_args(["serve", "--help"]) == ["--help"]
    assert _serve_args(["--server", "h:1", "serve", "--port", "0", "run"]) == ["--port", "0", "run"]
    assert _serve_args(["--server=h:1", "serve", "-h"]) == ["-h"]
    assert _serve_args(["run", "serve"]) is None
    assert _serve_args(["--help"]) is None


def test_serve_forwards_all_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    fake = types.ModuleType("tuneyard.server.cli")
    fake.serve_main = lambda argv: seen.append(argv) or 7  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tuneyard.server.cli", fake)
    assert main(["serve", "--help"]) == 7
    assert main(["serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", "d", "--cpu-slots", "2"]) == 7
    assert seen == [["--help"], ["--host", "127.0.0.1", "--port", "0", "--data-dir", "d", "--cpu-slots", "2"]]


@pytest.mark.parametrize(("module", "argv"), [("tuneyard.server.cli", ["serve"]), ("tuneyard.server.app", ["demo"])])
def test_server_commands_without_the_server_extra_say_how_to_get_it(
    module: str, argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes the import raise ImportError
    assert main(argv) == 2
    assert SERVER_EXTRA in capsys.readouterr().err


def test_unreachable_server_gives_a_helpful_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    assert main(["--server", address, "info"]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach a tuneyard server at {address}" in err and "tuneyard serve" in err
    with Client(address, timeout=5) as client, pytest.raises(TuneyardError) as info:
        client.info()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_environment_variable_picks_the_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("TUNEYARD_SERVER", address)
    assert main(["studies"]) == 2
    assert address in capsys.readouterr().err


def test_a_bad_spec_file_is_reported_before_anything_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: x\nbudget: {max_trails: 3}\n")
    assert main(["--server", "127.0.0.1:9", "run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "error: INVALID_ARGUMENT:" in err and "spec.budget.max_trails" in err and "max_trials" in err


def test_importing_the_client_pulls_in_no_torch_or_server_code() -> None:
    code = (
        "import sys, tuneyard.client, tuneyard.client.cli\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'pluggy', 'torchvision', 'sklearn')"
        " or m.startswith(('tuneyard.server', 'tuneyard.plugins'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
