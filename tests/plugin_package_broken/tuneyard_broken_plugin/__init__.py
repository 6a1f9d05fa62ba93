"""A plugin module that cannot be imported: it needs something this machine lacks."""

raise RuntimeError("tuneyard-broken-plugin fails to import on purpose")
