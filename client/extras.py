"""What the thin client says when a command needs an extra it was installed without.

``tuneyard serve`` and ``tuneyard demo`` run the server in this process; the base install (grpcio,
protobuf, pyyaml, rich) ships the server's code but not its dependencies, so these commands check
for them first and name the extra to install instead of failing half-way through start-up.
"""

from __future__ import annotations

import importlib.util

__all__ = ["SERVER_EXTRA", "SERVER_MODULES", "missing_server_modules"]

SERVER_EXTRA = "the server needs the [server] extra: pip install 'tuneyard[server]'"
# The top-level modules of the [server] extra (pyproject.toml's `server` list).
SERVER_MODULES = ("torch", "torchvision", "pluggy", "grpc_health", "grpc_reflection", "sklearn", "prometheus_client")


def missing_server_modules() -> list[str]:
    """The [server] extra's modules that are not importable here (without importing them)."""
    missing = []
    for name in SERVER_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
            found = False
        if not found:
            missing.append(name)
    return missing
