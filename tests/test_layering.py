"""Server and client never import each other: what both need lives in `tuneyard.common`.

Each check imports one module in a fresh interpreter and looks at `sys.modules`, so nothing a test
session already imported can hide an import (or fake one). `tuneyard serve` and `tuneyard demo`
start a server from the client's CLI, but only inside those commands (a lazy import), never when a
client module is imported.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from types import ModuleType

import pytest
from support import REPO

import tuneyard.client
import tuneyard.common
import tuneyard.server


def _modules(package: ModuleType) -> list[str]:
    """The package and every module and sub-package below it (found on disk, so new ones are checked too)."""
    name = package.__name__
    return [name, *(m.name for m in pkgutil.walk_packages(package.__path__, prefix=f"{name}."))]


def _imported_by(module: str) -> list[str]:
    """The `tuneyard.*` modules that importing `module` alone loads, in a fresh interpreter."""
    probe = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('tuneyard.'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def _under(names: list[str], package: str) -> list[str]:
    return [n for n in names if n == package or n.startswith(package + ".")]


@pytest.mark.parametrize("module", _modules(tuneyard.server))
def test_server_modules_import_no_client_module(module: str) -> None:
    assert _under(_imported_by(module), "tuneyard.client") == []


@pytest.mark.parametrize("module", _modules(tuneyard.client))
def test_client_modules_import_no_server_module(module: str) -> None:
    assert _under(_imported_by(module), "tuneyard.server") == []


@pytest.mark.parametrize("module", _modules(tuneyard.common))
def test_common_modules_import_neither_side(module: str) -> None:
    imported = _imported_by(module)
    assert _under(imported, "tuneyard.server") + _under(imported, "tuneyard.client") == []
