"""tuneyard: a self-hosted, plugin-based training server with a gRPC API."""

__version__ = "0.1.0"
