"""Reading study specs (YAML, JSON, dict) and turning trial configs back into plain values.

The spec file format *is* the proto3 JSON form of ``tuneyard.v1.StudySpec``, so
one file serves the SDK, the CLI and ``grpcurl``. Parsing goes through
``google.protobuf.json_format`` (strict: unknown fields are errors) so the
client never drifts from the wire contract; errors are reworded to name the
field path, the way the server does.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import grpc
import yaml
from google.protobuf import descriptor_pool, json_format

from tuneyard.client.errors import TuneyardError
from tuneyard.common.trials import config_to_dict, integer_parameters
from tuneyard.v1 import spec_pb2

__all__ = ["SpecSource", "load_spec", "parse_spec_text", "config_to_dict", "integer_parameters"]

SpecSource = Union[Mapping[str, Any], str, "os.PathLike[str]", spec_pb2.StudySpec]


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float.

    PyYAML follows YAML 1.1, where a float needs a dot, so ``lr: 1e-3`` would
    become the *string* "1e-3" and the server would reject the option type.
    """


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _invalid(message: str) -> TuneyardError:
    return TuneyardError(grpc.StatusCode.INVALID_ARGUMENT, message)


def parse_spec_text(text: str, *, origin: str = "") -> spec_pb2.StudySpec:
    """Parse YAML or JSON text (JSON is valid YAML) into a ``StudySpec``."""
    try:
        data = yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise _invalid(f"{origin or 'spec'}: not valid YAML/JSON: {exc}") from exc
    return _parse_dict(data, origin)


def load_spec(source: SpecSource) -> spec_pb2.StudySpec:
    """Load a study spec from a YAML/JSON file path, a proto3-JSON dict, or a ``StudySpec``.

    Raises :class:`TuneyardError` (``INVALID_ARGUMENT``, or ``NOT_FOUND`` for a
    missing file) with a message naming the offending field.
    """
    if isinstance(source, spec_pb2.StudySpec):
        spec = spec_pb2.StudySpec()
        spec.CopyFrom(source)
        return spec
    if isinstance(source, Mapping):
        return _parse_dict(source, "")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise TuneyardError(grpc.StatusCode.NOT_FOUND, f"spec file not found: {path}") from exc
        except OSError as exc:
            raise _invalid(f"cannot read spec file {path}: {exc}") from exc
        if path.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise _invalid(f"{path}: not valid JSON: {exc}") from exc
            return _parse_dict(data, str(path))
        return parse_spec_text(text, origin=str(path))
    raise TypeError(f"cannot load a study spec from {type(source).__name__}")


def _parse_dict(data: Any, origin: str) -> spec_pb2.StudySpec:
    if not isinstance(data, Mapping):
        got = type(data).__name__
        raise _invalid(f"{origin or 'spec'}: a study spec must be a mapping of fields, got {got}")
    spec = spec_pb2.StudySpec()
    try:
        json_format.ParseDict(dict(data), spec, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        where = f"{origin}: " if origin else ""
        raise _invalid(where + _describe(str(exc))) from exc
    return spec


_CHAIN = re.compile(r"Failed to parse (\w+) field: ")
_UNKNOWN = re.compile(r'Message type "([\w.]+)" has no field named "([^"]+)" at "StudySpec([^"]*)"')
_AT = re.compile(r"\s*at \"?StudySpec[^\s\"]*\"?\.*\s*$")


def _describe(message: str) -> str:
    """Reword a json_format ParseError as ``spec.<path>: <reason>``."""
    path: list[str] = []
    while match := _CHAIN.match(message):
        path.append(match.group(1))
        message = message[match.end() :]
    unknown = _UNKNOWN.search(message)
    if unknown:
        type_name, field, where = unknown.groups()
        known = _field_names(type_name)
        hint = difflib.get_close_matches(field, known, n=1)
        reason = f'unknown field "{field}"'
        reason += f" (did you mean {hint[0]}?)" if hint else f" (known fields: {', '.join(known)})"
        return f"spec{where}.{field}: {reason}"
    reason = _AT.sub("", message.strip()).rstrip(".") or "invalid value"
    return f"spec.{'.'.join(path)}: {reason}" if path else f"spec: {reason}"


def _field_names(full_name: str) -> list[str]:
    try:
        return [f.name for f in descriptor_pool.Default().FindMessageTypeByName(full_name).fields]
    except KeyError:
        return []
