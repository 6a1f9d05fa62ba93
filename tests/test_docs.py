"""The README is the plugin author's guide and the new user's first page: keep it in step with the code."""

from __future__ import annotations

import inspect
import os
import re

from support import REPO

from tuneyard.plugins import hookspecs

README = (REPO / "README.md").read_text()


def _hookspec_names() -> set[str]:
    return {
        name
        for name, func in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("tuneyard_") and func.__module__ == hookspecs.__name__
    }


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.MULTILINE | re.DOTALL)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def test_plugin_guide_documents_every_hook_and_no_stale_ones() -> None:
    specs = _hookspec_names()
    assert len(specs) >= 10, specs
    guide = _section("Writing a plugin")
    missing = sorted(name for name in specs if name not in guide)
    assert not missing, f"hooks missing from the README's plugin guide: {missing}"
    mentioned = set(re.findall(r"\b(tuneyard_[a-z_]+)\(", guide))
    assert mentioned <= specs, f"the README documents hooks that do not exist: {sorted(mentioned - specs)}"


def test_readme_gives_the_two_setup_commands_and_they_exist() -> None:
    assert "make demo" in README and "make test" in README
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.MULTILINE) and re.search(r"^test:", makefile, re.MULTILINE)


def test_ci_entry_point_runs_make_test() -> None:
    ci = REPO / ".ci" / "run"
    assert os.access(ci, os.X_OK), ".ci/run must be executable"
    lines = [line.strip() for line in ci.read_text().splitlines()]
    assert lines[0].startswith("#!") and "bash" in lines[0]
    assert "set -euo pipefail" in lines and "make test" in lines
