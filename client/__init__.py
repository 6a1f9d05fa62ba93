"""tuneyard package."""
