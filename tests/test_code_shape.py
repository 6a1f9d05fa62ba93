"""The package's source stays in small pieces: modules under 400 lines, functions under 60.

Issue 14 cut the middle into modules with one job each; this keeps it that way. Lengths are read
with `ast` (a function spans its `def` line to its last line, decorators aside; methods and nested
functions are measured on their own too). Generated protobuf modules are not ours to shape.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from support import REPO

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
SOURCE_DIRS = ("server", "plugins", "client", "protos/tuneyard/common", "examples")

# Modules ("path") and functions ("path:Qualified.name") still too long while issue 14 cuts them down.
# This set must only ever shrink: add nothing to it; when you shorten one, remove its entry (the test
# below fails until you do, so a fixed entry cannot linger).
STILL_TOO_LONG: set[str] = set()


def _sources() -> Iterator[Path]:
    for folder in SOURCE_DIRS:
        for path in sorted((REPO / folder).rglob("*.py")):
            if "_pb2" not in path.name:
                yield path


def _functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, int]]:
    """(qualified name, line count) of every function and method below ``tree``, nested ones too."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            name = f"{prefix}{node.name}"
            yield name, (node.end_lineno or node.lineno) - node.lineno + 1
            yield from _functions(node, f"{name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        else:
            yield from _functions(node, prefix)


def _too_long() -> dict[str, int]:
    """Every module and function over its limit, keyed as in STILL_TOO_LONG, with its length."""
    found: dict[str, int] = {}
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(REPO).as_posix()
        lines = len(text.splitlines())
        if lines >= MAX_MODULE_LINES:
            found[rel] = lines
        for name, length in _functions(ast.parse(text, filename=rel)):
            if length >= MAX_FUNCTION_LINES:
                found[f"{rel}:{name}"] = length
    return found


def test_the_walk_sees_the_package_source() -> None:
    paths = {p.relative_to(REPO).as_posix() for p in _sources()}
    assert "server/app.py" in paths and "client/sdk.py" in paths
    assert not any("_pb2" in p for p in paths)


def test_no_module_or_function_is_too_long_outside_the_shrinking_list() -> None:
    new = {key: length for key, length in _too_long().items() if key not in STILL_TOO_LONG}
    assert new == {}, (
        f"modules must stay under {MAX_MODULE_LINES} lines and functions under {MAX_FUNCTION_LINES}; "
        f"cut these into pieces with one job each: {new}"
    )


def test_every_entry_of_the_shrinking_list_is_still_too_long() -> None:
    fixed = sorted(STILL_TOO_LONG - set(_too_long()))
    assert fixed == [], f"these are short enough now: remove them from STILL_TOO_LONG: {fixed}"
