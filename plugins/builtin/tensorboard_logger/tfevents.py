"""TensorBoard event files, written without TensorFlow or the ``tensorboard`` package.

An event file is a TFRecord stream: per record ``uint64 length``, ``masked crc32c(length)``,
``data``, ``masked crc32c(data)`` (little-endian), where ``data`` is a serialized
``tensorboard.Event``. The few protobuf messages needed (Event, Summary, SummaryMetadata,
TensorProto, the hparams plugin's SessionStartInfo/SessionEndInfo) are encoded by hand in
protobuf's wire format: field numbers are from tensorboard's ``compat/proto/*.proto`` and
``plugins/hparams/*.proto``. Only ``google.protobuf.Value`` (hparam values) comes from protobuf.

Why by hand: the server must not depend on ``tensorboard`` (it pulls in a web server and a
native data server) just to append a few records; this module is the whole writer, and the
tests read its files back with tensorboard's own ``EventAccumulator``.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

from google.protobuf import struct_pb2

_DT_STRING = 7  # tensorflow DataType enum
# hparams plugin: tensorboard/plugins/hparams/metadata.py and api.proto
HPARAMS_PLUGIN = "hparams"
SESSION_START_TAG = "_hparams_/session_start_info"
SESSION_END_TAG = "_hparams_/session_end_info"
STATUS_SUCCESS, STATUS_FAILURE, STATUS_RUNNING, STATUS_UNKNOWN = 1, 2, 3, 0
_counter = itertools.count()

# ---- crc32c (Castagnoli), as TFRecord frames use it ----

_CRC_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One TFRecord: the length, its masked crc, the data, its masked crc."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


# ---- protobuf wire format ----


def _varint(n: int) -> bytes:
    n &= 0xFFFFFFFFFFFFFFFF  # negative int64 as two's complement, like protobuf
    out = bytearray()
    while True:
        bits = n & 0x7F
        n >>= 7
        if n:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _len(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _int(field: int, n: int) -> bytes:
    return _varint(field << 3) + _varint(n)


def _double(field: int, x: float) -> bytes:
    return _varint(field << 3 | 1) + struct.pack("<d", x)


def _float(field: int, x: float) -> bytes:
    return _varint(field << 3 | 5) + struct.pack("<f", x)


def _metadata(plugin_name: str, content: bytes = b"") -> bytes:
    """SummaryMetadata{plugin_data=1: PluginData{plugin_name=1, content=2}}."""
    return _len(1, _len(1, plugin_name.encode()) + (_len(2, content) if content else b""))


# ---- Event and Summary.Value ----


def event(wall_time: float, step: int = 0, *, file_version: str = "", values: list[bytes] | None = None) -> bytes:
    """Event{wall_time=1, step=2, file_version=3 | summary=5: Summary{value=1 (repeated)}}."""
    out = _double(1, wall_time) + (_int(2, step) if step else b"")
    if file_version:
        out += _len(3, file_version.encode())
    if values is not None:
        out += _len(5, b"".join(_len(1, v) for v in values))
    return out


def scalar_value(tag: str, value: float) -> bytes:
    """Summary.Value{tag=1, simple_value=2}: what TensorBoard's Scalars dashboard reads."""
    return _len(1, tag.encode()) + _float(2, value)


def text_value(tag: str, text: str) -> bytes:
    """Summary.Value{tag=1, tensor=8: DT_STRING [1], metadata=9: text plugin}."""
    shape = _len(2, _int(1, 1))  # TensorShapeProto{dim=2: Dim{size=1}}
    tensor = _int(1, _DT_STRING) + _len(2, shape) + _len(8, text.encode())
    return _len(1, tag.encode()) + _len(8, tensor) + _len(9, _metadata("text"))


def _hparams_value(tag: str, plugin_data: bytes) -> bytes:
    return _len(1, tag.encode()) + _len(9, _metadata(HPARAMS_PLUGIN, plugin_data))


def session_start_value(hparams: dict[str, Any], start_time: float) -> bytes:
    """HParamsPluginData{version=1: 0, session_start_info=3: SessionStartInfo{hparams=1 (map of
    google.protobuf.Value), start_time_secs=5}}; no group_name: each run is its own group."""
    info = b"".join(_len(1, _len(1, k.encode()) + _len(2, _pb_value(v))) for k, v in sorted(hparams.items()))
    info += _double(5, start_time)
    return _hparams_value(SESSION_START_TAG, _len(3, info))


def session_end_value(status: int, end_time: float) -> bytes:
    """HParamsPluginData{session_end_info=4: SessionEndInfo{status=1, end_time_secs=2}}."""
    return _hparams_value(SESSION_END_TAG, _len(4, _int(1, status) + _double(2, end_time)))


def _pb_value(value: Any) -> bytes:
    if isinstance(value, bool):
        msg = struct_pb2.Value(bool_value=value)
    elif isinstance(value, int | float):
        msg = struct_pb2.Value(number_value=float(value))
    elif isinstance(value, str):
        msg = struct_pb2.Value(string_value=value)
    else:  # lists, dicts, None: shown as their JSON
        msg = struct_pb2.Value(string_value=json.dumps(value, sort_keys=True, default=str))
    return msg.SerializeToString()


# ---- a file ----


class EventFile:
    """One ``events.out.tfevents.*`` file in ``run_dir``; each `write` appends whole records and
    closes the file again, so nothing stays open and every write is on disk for TensorBoard."""

    def __init__(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        name = f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}.{next(_counter)}"
        self.path = run_dir / name
        self.write(event(now, file_version="brain.Event:2"))

    def write(self, *events: bytes) -> None:
        with open(self.path, "ab") as f:
            f.write(b"".join(frame(e) for e in events))
