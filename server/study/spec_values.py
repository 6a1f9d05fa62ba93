"""Scalar values of a study spec and its overall shape: the checks every section shares.

The spec dict comes from proto3 JSON: int64 fields may arrive as decimal strings, numbers as
floats, durations as text like "7200s". Each check raises `InvalidArgument` with the field's path.
"""

from __future__ import annotations

import math
import re
from typing import Any

from tuneyard.plugins.schema import MAX_EXACT_INT
from tuneyard.server.limits import MAX_NAME_CHARS, MAX_NESTING, MAX_STRING_CHARS
from tuneyard.server.study.domain import InvalidArgument

_INTEGER_TEXT = re.compile(r"[+-]?[0-9]{1,20}")


def to_int(value: Any, path: str, limit: int | None = MAX_EXACT_INT) -> int:
    """An integer field's value, exactly: int64 fields arrive as decimal strings and must not pass
    through float (2**53 + 1 would silently become 2**53); numbers beyond 2**53 are refused."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
        number = int(value.strip())
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    else:
        raise InvalidArgument(path, f"expected an integer, got {value!r}")
    if not -(2**63) <= number < 2**63:
        raise InvalidArgument(path, f"out of the range of a 64-bit integer: {value!r}")
    if limit is not None and abs(number) > limit:
        raise InvalidArgument(path, f"must be between {-limit} and {limit}, got {value}")
    return number


def to_float(value: Any, path: str) -> float:
    """A finite number; text that parses as one is accepted (proto3 JSON may quote numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidArgument(path, f"expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise InvalidArgument(path, f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise InvalidArgument(path, f"must be finite, got {value!r}")
    return number


def duration_s(value: Any, path: str) -> float | None:
    """A proto3 JSON duration ("7200s") in seconds; None for no limit (absent or zero)."""
    if value in (None, "", "0s"):
        return None
    if not isinstance(value, str) or not value.endswith("s"):
        raise InvalidArgument(path, f"expected a duration like '7200s', got {value!r}")
    try:
        seconds = float(value[:-1])
    except ValueError:
        raise InvalidArgument(path, f"expected a duration like '7200s', got {value!r}") from None
    if seconds < 0:
        raise InvalidArgument(path, "must not be negative")
    return seconds or None


def check_shape(value: Any, path: str, depth: int = 0) -> None:
    """Refuses objects and lists more than MAX_NESTING levels below `spec` (`value` is at `depth`),
    keys longer than MAX_NAME_CHARS and strings longer than MAX_STRING_CHARS."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        if isinstance(key, str) and len(key) > MAX_NAME_CHARS:
            raise InvalidArgument(path, f"has a key longer than {MAX_NAME_CHARS} characters")
        child_path = f"{path}[{key}]" if isinstance(value, list) else f"{path}.{key}"
        if isinstance(child, str) and len(child) > MAX_STRING_CHARS:
            raise InvalidArgument(child_path, f"longer than {MAX_STRING_CHARS} characters ({len(child)})")
        if not isinstance(child, (dict, list)):
            continue
        if depth + 1 > MAX_NESTING:
            raise InvalidArgument(child_path, f"nested deeper than {MAX_NESTING} levels")
        check_shape(child, child_path, depth + 1)
