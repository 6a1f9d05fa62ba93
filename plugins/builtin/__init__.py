"""The built-in plugins. Each module is an ordinary plugin, registered through the hooks
exactly like a third-party one (see `tuneyard.plugins.manager.BUILTIN_MODULES`)."""
