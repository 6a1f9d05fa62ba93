"""Plugin modules from a folder of `*.py` files (`tuneyard serve --plugins-dir`, datasette's convention).

The operator chooses the folder, so its files run as the server's own code, in the server and in every
worker; specs still only name plugins. A file that fails to import is reported under its file name,
never the server's path, and left out.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

MODULE_PREFIX = "tuneyard_plugins_dir"  # the files' modules are tuneyard_plugins_dir.<file stem>


@dataclass(frozen=True)
class PluginFile:
    """One `*.py` of the folder: its module, or why it could not be imported."""

    file_name: str
    module: ModuleType | None = None
    error: str = ""


def import_plugin_files(folder: Path) -> list[PluginFile]:
    """Imports each `*.py` directly in `folder`, in name order."""
    found = []
    for path in sorted(folder.glob("*.py")):
        name = f"{MODULE_PREFIX}.{path.stem}"
        try:
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise ImportError("not a Python module")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            why = f"{type(exc).__name__}: {exc}".replace(str(path), path.name)  # a SyntaxError names its full path
            found.append(PluginFile(path.name, error=why))
            continue
        found.append(PluginFile(path.name, module))
    return found
