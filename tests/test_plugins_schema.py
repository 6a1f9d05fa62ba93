"""Schema derivation from factory signatures/docstrings, and option coercion."""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional  # noqa: UP035 - Optional is what is being tested

import pytest

from tuneyard.plugins.api import REQUIRED, DataPath, ParamSpec
from tuneyard.plugins.schema import coerce_option, derive_params, describe, param_docs, resolve_options, type_name

if TYPE_CHECKING:  # as the built-ins import torch: for type checkers only, never at run time
    from a_module_nobody_installed import Unimportable  # type: ignore[import-not-found]


def model_factory(
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    width: int = 64,
    rate: float = 0.1,
    use_bias: bool = True,
    act: str = "relu",
    sizes: list[int] | None = None,
    extra: dict[str, float] | None = None,
    seed: Optional[int] = None,  # noqa: UP045
    anything: Any = None,
    mode: Literal["a", "b"] = "a",
    untyped=0.5,
    depth: int,
) -> object:
    """A model used to test schemas.

    More prose that is not part of the first line.

    Args:
        width: channels of
            every layer.
        rate (float): dropout rate.
        use_bias: add a bias.
        depth: number of layers.

    Returns:
        nothing useful.
    """
    return None


def test_types_defaults_and_docs_from_a_future_annotations_factory() -> None:
    params = {p.name: p for p in derive_params(model_factory, "model")}
    assert list(params) == [
        "width",
        "rate",
        "use_bias",
        "act",
        "sizes",
        "extra",
        "seed",
        "anything",
        "mode",
        "untyped",
        "depth",
    ]
    assert {n: p.type for n, p in params.items()} == {
        "width": "int",
        "rate": "float",
        "use_bias": "bool",
        "act": "str",
        "sizes": "list",
        "extra": "dict",
        "seed": "int",
        "anything": "any",
        "mode": "str",
        "untyped": "float",
        "depth": "int",
    }
    assert params["width"] == ParamSpec("width", "int", 64, "channels of every layer.")
    assert params["rate"].doc == "dropout rate."
    assert params["act"].doc == ""
    assert params["depth"].default is REQUIRED and params["depth"].required
    assert params["depth"].doc == "number of layers."
    assert not params["width"].required
    assert describe(model_factory) == "A model used to test schemas."


def test_injected_names_are_skipped_only_for_their_kind() -> None:
    names = [p.name for p in derive_params(model_factory, "model")]
    assert "input_shape" not in names and "num_classes" not in names
    as_optimizer = [p.name for p in derive_params(model_factory, "optimizer")]
    assert as_optimizer[:2] == ["input_shape", "num_classes"]


def test_positional_parameters_and_var_keywords_are_not_options() -> None:
    def opt(params, lr=0.1, *args: Any, momentum: float = 0.0, **kwargs: Any) -> None:
        """Optimizer."""

    assert derive_params(opt, "optimizer") == (ParamSpec("momentum", "float", 0.0, ""),)


def test_unresolvable_string_annotations_fall_back_to_their_text() -> None:
    def factory(*, a: int = 1, b: float | None = None, c: NotDefined = None, d: list[Nope] = ()):  # noqa: F821
        """No Args section."""

    assert [(p.name, p.type) for p in derive_params(factory, "dataset")] == [
        ("a", "int"),
        ("b", "float"),
        ("c", "any"),
        ("d", "list"),
    ]


def lazy_factory(
    *,
    input_shape: Unimportable,
    num_classes: int,
    mode: Literal["fast", "slow"] = "fast",
    weights: DataPath = "",
    width: Annotated[int, "channels"] = 8,
    rate: float | None = None,
    depth: int = 2,
) -> Unimportable:
    """A model whose return and injected `input_shape` name a type that exists only for type checkers."""
    raise AssertionError("never called")


def test_an_unresolvable_return_or_injected_annotation_leaves_the_options_exact_types() -> None:
    with pytest.raises(NameError):  # resolving the whole signature at once fails on the return type
        typing.get_type_hints(lazy_factory)
    assert [(p.name, p.type, p.default) for p in derive_params(lazy_factory, "model")] == [
        ("mode", "str", "fast"),
        ("weights", "path", ""),
        ("width", "int", 8),
        ("rate", "float", None),
        ("depth", "int", 2),
    ]
    # Not injected for another kind, the unresolvable parameter itself falls back to its text alone.
    shape = next(p for p in derive_params(lazy_factory, "dataset") if p.name == "input_shape")
    assert (shape.type, shape.required) == ("any", True)


def test_class_factories_are_read_from_init() -> None:
    class Stopper:
        """Stops things.

        Args:
            patience: epochs without improvement.
        """

        def __init__(self, *, objective: object, patience: int = 3) -> None:
            self.patience = patience

    assert derive_params(Stopper, "early_stopper") == (ParamSpec("patience", "int", 3, "epochs without improvement."),)
    assert describe(Stopper) == "Stops things."


def test_param_docs_without_section_and_describe_without_docstring() -> None:
    def bare(*, x: int = 1):
        pass

    assert param_docs(bare) == {}
    assert describe(bare) == ""


INT = ParamSpec("n", "int", 1)
FLOAT = ParamSpec("x", "float", 1.0)


@pytest.mark.parametrize(
    ("param", "value", "expected"),
    [
        (INT, 3, 3),
        (INT, 3.0, 3),
        (INT, -2.0, -2),
        (FLOAT, 2, 2.0),
        (FLOAT, 0.5, 0.5),
        (ParamSpec("b", "bool", False), True, True),
        (ParamSpec("s", "str", ""), "hi", "hi"),
        (ParamSpec("l", "list", ()), [1, "a"], [1, "a"]),
        (ParamSpec("l", "list", ()), (1, 2), [1, 2]),
        (ParamSpec("d", "dict", None), {"a": 1}, {"a": 1}),
        (ParamSpec("a", "any", None), object, object),
        (ParamSpec("o", "int", None), None, None),
    ],
)
def test_coerce_option_accepts(param: ParamSpec, value: Any, expected: Any) -> None:
    result = coerce_option(param, value)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize(
    ("param", "value", "reason"),
    [
        (INT, "abc", "expected int, got 'abc'"),
        (INT, 3.5, "expected int, got 3.5"),
        (INT, True, "expected int, got True"),
        (INT, None, "expected int, got None"),
        (FLOAT, False, "expected float, got False"),
        (FLOAT, "1.0", "expected float, got '1.0'"),
        (ParamSpec("b", "bool", False), 1, "expected bool, got 1"),
        (ParamSpec("s", "str", ""), 1.0, "expected str, got 1.0"),
        (ParamSpec("l", "list", ()), "ab", "expected list, got 'ab'"),
        (ParamSpec("d", "dict", {}), [1], "expected dict, got [1]"),
    ],
)
def test_coerce_option_rejects_with_a_reason(param: ParamSpec, value: Any, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        coerce_option(param, value)
    assert str(info.value) == reason


def test_resolve_options_fills_defaults_and_names_the_bad_option() -> None:
    params = derive_params(model_factory, "model")
    resolved = resolve_options(params, {"width": 8.0, "depth": 2}, "model 'm'")
    assert resolved["width"] == 8 and type(resolved["width"]) is int
    assert resolved["rate"] == 0.1 and resolved["depth"] == 2
    with pytest.raises(ValueError, match="option 'width' of model 'm': expected int, got 'x'"):
        resolve_options(params, {"width": "x", "depth": 1}, "model 'm'")
    with pytest.raises(ValueError, match="unknown option 'widht'"):
        resolve_options(params, {"widht": 1, "depth": 1}, "model 'm'")
    with pytest.raises(ValueError, match="option 'depth' of model 'm' is required"):
        resolve_options(params, {}, "model 'm'")


def dataset_factory(*, root: str, path: DataPath, weights: DataPath | None = None, name: str = "x") -> object:
    return None


def test_a_data_path_option_has_type_path_and_takes_strings() -> None:
    params = {p.name: p for p in derive_params(dataset_factory, "dataset")}
    assert {n: p.type for n, p in params.items()} == {"path": "path", "weights": "path", "name": "str"}
    assert type_name("DataPath") == type_name("Optional[DataPath]") == "path"  # unresolvable string annotations
    assert coerce_option(params["path"], "images/train") == "images/train"
    with pytest.raises(ValueError, match="expected path, got 3"):
        coerce_option(params["path"], 3)
