"""A plugin's parameter schema, derived from its factory's keyword-only parameters.

Plugin authors write an ordinary typed function; the schema (what `ListPlugins` shows and
what specs are validated against) is read from its signature and docstring, so the two
cannot drift apart.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import math
import re
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

from tuneyard.plugins.api import DATA_PATH, INJECTED, REQUIRED, ParamSpec

# "path": a str annotated `DataPath`, which the server confines to its data root.
TYPES = ("int", "float", "bool", "str", "path", "list", "dict", "any")

# Options travel in a protobuf Struct, whose numbers are doubles: integers beyond 2**53 are not exact.
MAX_EXACT_INT = 2**53

_SCALARS: dict[Any, str] = {bool: "bool", int: "int", float: "float", str: "str"}
_LISTS = (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Iterable)
_DICTS = (dict, collections.abc.Mapping)
_SECTION = re.compile(r"^(Args|Arguments|Parameters|Keyword Args|Keyword Arguments|Options):\s*$")
_ENTRY = re.compile(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def describe(factory: Callable[..., Any]) -> str:
    """The first line of the factory's docstring, or ""."""
    doc = inspect.getdoc(factory) or ""
    return next((line.strip() for line in doc.splitlines() if line.strip()), "")


def param_docs(factory: Callable[..., Any]) -> dict[str, str]:
    """Parse the Google-style ``Args:`` section: ``name: text`` entries, continuation lines joined."""
    docs: dict[str, str] = {}
    lines = (inspect.getdoc(factory) or "").splitlines()
    in_section, section_indent, entry_indent, current = False, 0, None, None
    for raw in lines:
        indent = len(raw) - len(raw.lstrip())
        line = raw.strip()
        if not in_section:
            if _SECTION.match(line):
                in_section, section_indent, entry_indent, current = True, indent, None, None
            continue
        if not line:
            continue
        if indent <= section_indent:  # dedent: the section ended (maybe another one starts)
            in_section = bool(_SECTION.match(line))
            section_indent, entry_indent, current = indent, None, None
            continue
        match = _ENTRY.match(line)
        if match and (entry_indent is None or indent <= entry_indent):
            entry_indent = indent
            current = match.group(1).lstrip("*")
            docs[current] = match.group(2).strip()
        elif current is not None:
            docs[current] = f"{docs[current]} {line}".strip()
    return docs


def _type_from_value(value: Any) -> str:
    if value is REQUIRED or value is None:
        return "any"
    for cls, name in _SCALARS.items():  # bool first: it is an int subclass
        if isinstance(value, cls):
            return name
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "dict"
    return "any"


def _type_from_string(annotation: str) -> str:
    """Best effort for a string annotation that `get_type_hints` could not resolve."""
    text = annotation.replace(" ", "").strip("'\"")
    if text.startswith("Optional[") and text.endswith("]"):
        text = text[len("Optional[") : -1]
    parts = [p for p in text.split("|") if p not in ("None", "NoneType")]
    if len(parts) != 1:
        return "float" if sorted(parts) == ["float", "int"] else "any"
    base = parts[0].split("[", 1)[0].rsplit(".", 1)[-1]
    names = {
        "DataPath": "path",
        "bool": "bool",
        "int": "int",
        "float": "float",
        "str": "str",
        "list": "list",
        "tuple": "list",
        "set": "list",
        "Sequence": "list",
        "List": "list",
        "Tuple": "list",
        "dict": "dict",
        "Mapping": "dict",
        "Dict": "dict",
    }
    return names.get(base, "any")


def type_name(annotation: Any, default: Any = REQUIRED) -> str:
    """Map an annotation to one of TYPES; unannotated parameters take their default's type."""
    if annotation is inspect.Parameter.empty:
        return _type_from_value(default)
    if isinstance(annotation, str):
        return _type_from_string(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        if any(meta is DATA_PATH for meta in annotation.__metadata__):
            return "path"
        return type_name(typing.get_args(annotation)[0], default)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return type_name(args[0], default)
        names = {type_name(a) for a in args}
        return "float" if names == {"int", "float"} else "any"
    if origin is typing.Literal:
        names = {_type_from_value(v) for v in typing.get_args(annotation)}
        return names.pop() if len(names) == 1 else "any"
    base = origin or annotation
    if base in _SCALARS:
        return _SCALARS[base]
    if isinstance(base, type) and issubclass(base, _DICTS):
        return "dict"
    if isinstance(base, type) and issubclass(base, _LISTS) and base is not str:
        return "list"
    return "any"


def _namespace(factory: Callable[..., Any]) -> dict[str, Any]:
    """The globals the factory's annotations are written in: its function's, else its module's."""
    target: Any = factory
    while isinstance(target, functools.partial):
        target = target.func
    target = inspect.unwrap(target.__init__ if inspect.isclass(target) else target)
    found = getattr(target, "__globals__", None)
    if isinstance(found, dict):
        return found
    module = sys.modules.get(getattr(target, "__module__", None) or "")
    return vars(module) if module is not None else {}


def _hint(annotation: Any, namespace: dict[str, Any]) -> Any:
    """One parameter's annotation resolved on its own, as `get_type_hints` would resolve it.

    Each is resolved alone so that a factory whose return or injected parameter names a type that is
    imported only under TYPE_CHECKING (torch, in the built-ins) keeps the exact types of its options.
    One that does not resolve stays as written (a string, for `_type_from_string`).
    """
    if annotation is inspect.Parameter.empty:
        return annotation

    def holder() -> None: ...

    holder.__annotations__ = {"value": annotation}
    try:
        return typing.get_type_hints(holder, globalns=namespace, include_extras=True)["value"]
    except Exception:  # an unresolvable forward reference: parse the string instead
        return annotation


def derive_params(factory: Callable[..., Any], kind: str) -> tuple[ParamSpec, ...]:
    """The user options of ``factory``: its keyword-only parameters minus ``INJECTED[kind]``.

    Raises TypeError when the factory has no inspectable signature.
    """
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"cannot read the signature of {factory!r}: {exc}") from None
    namespace, docs = _namespace(factory), param_docs(factory)
    injected = INJECTED.get(kind, frozenset())
    specs = []
    for param in signature.parameters.values():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY or param.name in injected:
            continue
        default = REQUIRED if param.default is inspect.Parameter.empty else param.default
        annotation = _hint(param.annotation, namespace)
        specs.append(ParamSpec(param.name, type_name(annotation, default), default, docs.get(param.name, "")))
    return tuple(specs)


def accepted_kwargs(factory: Callable[..., Any], names: collections.abc.Iterable[str]) -> set[str]:
    """Which of ``names`` the factory accepts as keywords (all of them if it takes ``**kwargs``)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return set(names)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return set(names)
    keywords = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return keywords & set(names)


def coerce_option(param: ParamSpec, value: Any) -> Any:
    """Check ``value`` against ``param``'s type and return it in that type.

    Values arrive from a protobuf Struct, where every number is a float: an int parameter
    accepts 3.0 (as 3) but not 3.5 or True. ``None`` is accepted only when it is the default.
    Raises ValueError with a short reason such as ``expected int, got 'abc'``.
    """
    kind = param.type
    if value is None and param.default is None:
        return None
    if kind == "any":
        return value
    ok: Any = None
    if kind == "int" and not isinstance(value, bool):
        if isinstance(value, int):
            ok = value
        elif isinstance(value, float) and value.is_integer():
            ok = int(value)
        if ok is not None and abs(ok) > MAX_EXACT_INT:  # a Struct number past 2**53 has lost digits
            raise ValueError(f"must be between {-MAX_EXACT_INT} and {MAX_EXACT_INT}, got {value!r}")
    elif kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        ok = float(value)
    elif kind == "bool" and isinstance(value, bool):
        ok = value
    elif kind in ("str", "path") and isinstance(value, str):
        ok = value
    elif kind == "list" and isinstance(value, (list, tuple)):
        ok = list(value)
    elif kind == "dict" and isinstance(value, dict):
        ok = dict(value)
    elif kind not in TYPES:
        raise ValueError(f"unknown parameter type {kind!r}")
    if ok is None:
        raise ValueError(f"expected {kind}, got {value!r}")
    if param.bounds is not None and kind in ("int", "float"):
        if kind == "float" and not math.isfinite(ok):
            raise ValueError(f"must be finite, got {ok}")
        problem = param.bounds.problem(ok)
        if problem is not None:
            raise ValueError(problem)
    return ok


def resolve_options(params: tuple[ParamSpec, ...], options: dict[str, Any], what: str = "plugin") -> dict[str, Any]:
    """Coerce ``options`` and fill defaults; ValueError names the offending option.

    ``what`` names the plugin in messages, e.g. "optimizer 'adam'".
    """
    known = {p.name: p for p in params}
    unknown = sorted(set(options) - set(known))
    if unknown:
        names = ", ".join(known) or "none"
        raise ValueError(f"unknown option {unknown[0]!r} of {what} (known: {names})")
    resolved: dict[str, Any] = {}
    for name, spec in known.items():
        if name in options:
            try:
                resolved[name] = coerce_option(spec, options[name])
            except ValueError as exc:
                raise ValueError(f"option {name!r} of {what}: {exc}") from None
        elif spec.required:
            raise ValueError(f"option {name!r} of {what} is required")
        else:
            resolved[name] = spec.default
    return resolved
