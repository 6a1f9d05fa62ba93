"""Code that both the server and the client need, so that neither imports the other.

Nothing here imports ``tuneyard.server`` or ``tuneyard.client``, nor anything beyond the base
install (grpcio, protobuf): the thin client and the server process can both depend on it.
``tests/test_layering.py`` keeps it that way.
"""
