"""Example study specs shipped with tuneyard (read by ``tuneyard demo`` via importlib.resources)."""
