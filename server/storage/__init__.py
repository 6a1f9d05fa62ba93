"""Persistence: the SQLite store (one file per server, every decision journaled in a transaction)
and the translation of SQLite failures into domain errors."""
