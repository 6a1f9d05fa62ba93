"""Packaging: checked-in stubs are current, the `package-dir` mapping leaks no bare names, and the
wheel installs into a fresh venv with only the base (client) dependencies."""

from __future__ import annotations

import filecmp
import json
import os
import shlex
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from support import REPO

STUBS = REPO / "protos" / "tuneyard" / "v1"
BARE_NAMES = ("server", "client", "plugins", "protos", "examples")


def _makefile_protoc_args(out_dir: Path) -> list[str]:
    """The `make protos` recipe's protoc arguments, with every `--*_out` pointed at `out_dir`."""
    recipe = next(line for line in (REPO / "Makefile").read_text().splitlines() if "grpc_tools.protoc" in line)
    words = shlex.split(recipe)
    args = words[words.index("grpc_tools.protoc") + 1 :]
    expanded: list[str] = []
    for arg in args:
        if arg.startswith("--") and "_out=" in arg:
            arg = arg.split("=", 1)[0] + "=" + str(out_dir)
        if "*" in arg:
            matches = sorted(str(p.relative_to(REPO)) for p in REPO.glob(arg))
            assert matches, f"the Makefile's glob {arg!r} matches nothing"
            expanded.extend(matches)
        else:
            expanded.append(arg)
    return expanded


def test_checked_in_stubs_match_a_fresh_make_protos(tmp_path: Path) -> None:
    args = _makefile_protoc_args(tmp_path)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", *args], cwd=REPO, check=True, timeout=120)

    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    checked_in = sorted(p.relative_to(REPO / "protos") for p in STUBS.glob("*_pb2*.py*"))
    assert fresh, "protoc generated nothing"
    assert fresh == checked_in, "generated and checked-in stub files differ; run `make protos`"
    stale = [str(rel) for rel in fresh if not filecmp.cmp(tmp_path / rel, REPO / "protos" / rel, shallow=False)]
    assert not stale, f"stale generated stubs {stale}; run `make protos` and commit the result"


def test_every_package_folder_is_listed_for_the_wheel() -> None:
    """setuptools packs only the packages pyproject lists: a new package folder left out installs in
    editable mode and is missing from the wheel (plugins.builtin.tasks once was)."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {name: REPO / folder for name, folder in config["package-dir"].items()}
    found = set()
    for name, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            relative = init.parent.relative_to(folder).parts
            if "__pycache__" not in relative and not any(part.startswith(".") for part in relative):
                found.add(".".join((name, *relative)))
    nested_roots = {n for n in found if any(n != r and n.startswith(r + ".") for r in roots)}
    assert found - set(config["packages"]) == set(), "add them to [tool.setuptools] packages"
    assert nested_roots  # the walk saw the sub-packages


def test_bare_folder_names_are_not_importable_from_the_installed_package() -> None:
    # From the repo root, plain `python -c` or `python -m pytest` puts the cwd on sys.path, so the
    # *folders* `server/`, `client/`... would import as bare packages there; that is the repo checkout
    # shadowing the install, not something the install provides. What must hold is that the
    # installation (editable here, a wheel in the test below) exposes only `tuneyard.*`: an
    # interpreter in isolated mode (-I: no cwd, no PYTHONPATH, no user site) started in the repo
    # root must fail `import server` and resolve `tuneyard.server` to the folder through the mapping.
    probe = (
        "import importlib, importlib.util, json\n"
        f"names = {BARE_NAMES!r}\n"
        "found = {n: importlib.util.find_spec(n).origin for n in names if importlib.util.find_spec(n)}\n"
        "for n in names:\n"
        "    try:\n"
        "        importlib.import_module(n)\n"
        "    except ModuleNotFoundError:\n"
        "        pass\n"
        "    else:\n"
        "        found.setdefault(n, 'imported')\n"
        "mapped = {m: importlib.import_module(m).__file__ for m in\n"
        "          ('tuneyard.server', 'tuneyard.client', 'tuneyard.plugins', 'tuneyard.v1')}\n"
        "print(json.dumps({'found': found, 'mapped': mapped}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-I", "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["found"] == {}, f"bare top-level modules are importable: {result['found']}"
    expected = {
        "tuneyard.server": REPO / "server" / "__init__.py",
        "tuneyard.client": REPO / "client" / "__init__.py",
        "tuneyard.plugins": REPO / "plugins" / "__init__.py",
        "tuneyard.v1": STUBS / "__init__.py",
    }
    assert {k: Path(v) for k, v in result["mapped"].items()} == expected


def test_the_test_session_never_imports_the_folders_under_bare_names() -> None:
    # `--import-mode=importlib` keeps tests and conftest from importing `server/` as `server`;
    # a module object for the same file under two names would split global state in two.
    leaked = {
        name: getattr(mod, "__file__", None)
        for name, mod in list(sys.modules.items())
        if name.split(".")[0] in BARE_NAMES
        and getattr(mod, "__file__", None)
        and Path(mod.__file__).resolve().is_relative_to(REPO)
    }
    assert leaked == {}


def _build_wheel(tmp_path: Path) -> Path:
    """Build from a copy of the checkout (git-tracked and untracked, non-ignored files), so the
    build neither reads stale `build/` output nor writes into the working tree."""
    src = tmp_path / "src"
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=60,
    )
    for rel in filter(None, listing.stdout.decode().split("\0")):
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    out = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = out.glob("tuneyard-*.whl")
    return wheel


@pytest.mark.timeout(900)  # builds a wheel and pip-installs the base dependencies from the index
def test_wheel_installs_into_a_fresh_venv_with_only_the_thin_client(tmp_path: Path, server) -> None:
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    top_level = {n.split("/")[0] for n in names}
    assert top_level == {"tuneyard", "tuneyard-0.1.0.dist-info"}, top_level
    expected = {
        "tuneyard/py.typed",
        "tuneyard/v1/service.proto",
        "tuneyard/v1/service_pb2_grpc.py",
        "tuneyard/examples/digits.yaml",
        "tuneyard/server/app.py",
        "tuneyard/plugins/hookspecs.py",
    }
    assert expected <= set(names), sorted(expected - set(names))

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    bindir = env_dir / "bin"
    py = bindir / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"

    def run(*cmd: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(c) for c in cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
        if check:
            assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    run(py, "-m", "pip", "install", "--quiet", wheel)

    thin = (
        "import sys, tuneyard.client, tuneyard.v1.service_pb2_grpc\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pluggy', 'sklearn'))\n"
        "assert not heavy, heavy\n"
        "assert 'tuneyard.server' not in sys.modules\n"
        "import importlib.util\n"
        "assert importlib.util.find_spec('torch') is None\n"
        "print(tuneyard.client.__file__)\n"
    )
    out = run(py, "-I", "-c", thin).stdout
    assert Path(out.strip()).is_relative_to(env_dir), out

    assert "usage: tuneyard" in run(bindir / "tuneyard", "--help").stdout
    assert run(py, "-m", "pip", "show", "torch", check=False).returncode != 0

    # The thin client talks to a real server: `tuneyard info` from the base-only install.
    info = run(bindir / "tuneyard", "--server", server.address, "info")
    assert "0.1.0" in info.stdout

    # ... and evaluates an external study itself: `Client.optimize` with no torch in the process.
    done = json.loads(run(py, "-I", "-c", OPTIMIZE_SCRIPT, server.address).stdout.strip().splitlines()[-1])
    assert done["state"] == "STUDY_COMPLETED" and done["trials"] == 4 and done["heavy"] == [], done
    assert done["best"] == min(done["values"]) and len(done["values"]) == 4, done


# Run by the base-only venv's python: a quadratic minimised on two worker threads, as JSON.
OPTIMIZE_SCRIPT = """
import json, sys
from tuneyard.client import Client
from tuneyard.v1 import service_pb2
spec = {"name": "thin-optimize", "external": {}, "search_space": [{"name": "x", "float_range": {"low": -2, "high": 2}}],
        "objective": {"metric": "value", "mode": "MINIMIZE"}, "budget": {"max_trials": 4, "max_concurrent_trials": 2}}
with Client(sys.argv[1]) as client:
    result = client.optimize(spec, lambda trial: (trial.config["x"] - 0.5) ** 2, n_workers=2, progress=False)
    values = [t.objective_value for t in client.list_trials(result.study.study_id)]
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "pluggy", "sklearn") or "tuneyard.server" in m)
print(json.dumps({"state": service_pb2.StudyState.Name(result.study.state), "trials": len(values), "values": values,
                  "best": result.best_metrics["value"], "heavy": heavy}))
"""
