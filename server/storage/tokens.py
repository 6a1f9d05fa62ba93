"""Page tokens: opaque to clients, each the row id (or trial id) a page of a listing ends after."""

from __future__ import annotations

import base64
import re

from tuneyard.server.study.domain import InvalidArgument

_MAX_ROW = 2**63 - 1  # SQLite's INTEGER is signed 64-bit: no row id, hence no page token, lies beyond
_TOKEN_TEXT = re.compile(r"r(0|[1-9][0-9]{0,18})")
_MAX_TOKEN_CHARS = 32  # encode_token(_MAX_ROW) has 28


def encode_token(row: int) -> str:
    return base64.urlsafe_b64encode(f"r{row}".encode()).decode()


def decode_token(token: str) -> int:
    """Page tokens are opaque to clients: anything but what `encode_token` made of a row id SQLite can
    hold (0..2**63-1) is an invalid argument, never a query with a number SQLite cannot bind."""
    if not token:
        return 0
    row = _token_row(token)
    if row is None:
        raise InvalidArgument("page_token", "not a token returned by this server")
    return row


def _token_row(token: str) -> int | None:
    if len(token) > _MAX_TOKEN_CHARS:
        return None
    try:
        match = _TOKEN_TEXT.fullmatch(base64.urlsafe_b64decode(token).decode("ascii"))
    except ValueError:  # not base64 (binascii.Error), not ASCII (UnicodeError)
        return None
    row = int(match.group(1)) if match else -1
    return row if 0 <= row <= _MAX_ROW and encode_token(row) == token else None
