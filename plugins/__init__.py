"""tuneyard plugins: hook specifications, the registry facade and the built-in plugins.

Plugin authors write ``from tuneyard.plugins import hookimpl``; see `tuneyard.plugins.hookspecs`.
"""

from tuneyard.plugins.hookspecs import hookimpl

__all__ = ["hookimpl"]
