"""Options that name a file or folder: `DataPath`, and the one rule that keeps them inside the data root.

Re-exported by `tuneyard.plugins.api`, where plugin authors import them from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

# Longest DataPath value, and longest component of one (Linux's PATH_MAX and NAME_MAX).
MAX_PATH_CHARS = 4096
MAX_PATH_PART_BYTES = 255


class _DataPathMarker:
    """The metadata that makes `Annotated[str, DATA_PATH]` a path inside the data root."""

    def __repr__(self) -> str:
        return "DATA_PATH"


DATA_PATH: Any = _DataPathMarker()
DataPath = Annotated[str, DATA_PATH]
"""A str option naming a file or folder inside the server's data root; its schema type is "path"."""


def resolve_data_path(root: str | os.PathLike[str], value: str) -> Path:
    """``value`` (relative to ``root``, or absolute) resolved with every symbolic link followed.

    The result may not exist yet (a dataset may download into it). ValueError, with a reason that
    names no resolved location, when ``value`` holds a NUL byte, is longer than MAX_PATH_CHARS (or a
    component longer than MAX_PATH_PART_BYTES), has a ``..`` component (even one that stays inside),
    cannot be resolved (a link loop), or resolves outside ``root`` (an absolute path elsewhere, a
    link anywhere along it that points out); also when ``root`` is "" (no data root configured).
    Only where the path finally leads counts: an absolute path through a link elsewhere that lands
    inside ``root`` is accepted.

    The one confinement rule: the server's validation and the built-in datasets and models (when a
    trial opens the files) all call it, so a value is accepted or refused alike at both times.
    """
    if "\x00" in value:
        raise ValueError(f"{value!r} contains a NUL byte")
    if len(value) > MAX_PATH_CHARS:
        raise ValueError(f"longer than {MAX_PATH_CHARS} characters")
    if any(len(part.encode("utf-8", "surrogatepass")) > MAX_PATH_PART_BYTES for part in value.split("/")):
        raise ValueError(f"has a component longer than {MAX_PATH_PART_BYTES} bytes")
    if not root:
        raise ValueError(f"{value!r}: the server has no data root (--data-root) to read it from")
    base = Path(root).resolve()
    # Where `value` points before any link is followed, from the root as resolved or as configured.
    on_paper = any(_inside(b, Path(os.path.normpath(b / value))) for b in (base, Path(os.path.abspath(root))))
    if ".." in Path(value).parts:  # even one inside on paper: a link before the `..` may lead anywhere
        raise ValueError(f"{value!r} escapes the data root" if not on_paper else f"{value!r} has a '..' component")
    try:
        target = (base / value).resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic-link loop (Python < 3.13)
        raise ValueError(f"{value!r} cannot be resolved: {type(exc).__name__}") from None
    if not _inside(base, target):
        reason = "follows a symbolic link out of the data root" if on_paper else "escapes the data root"
        raise ValueError(f"{value!r} {reason}")
    return target


def _inside(base: Path, target: Path) -> bool:
    return target == base or base in target.parents
