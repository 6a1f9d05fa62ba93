"""Bounds on numeric plugin options: declared with `register(..., bounds=...)`, refused when the
declaration is bad, enforced before a plugin is built, and listed by ListPlugins.

Issue 13, item 7: ASHA `grace_period` 0, `reduction_factor` 1, TPE `n_startup_trials` -1 and grid
`num_points` 0 used to pass CreateStudy and fail the study later as "internal error"; they are now
INVALID_ARGUMENT naming the option, and nothing is stored.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from PIL import Image
from support import grpcurl_binary, tiny_spec, to_proto

from tuneyard.plugins import hookimpl
from tuneyard.plugins.api import Bounds, FloatRange, IntRange, Objective, Parameter
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.v1 import service_pb2 as pb

LIMITS = ("ge", "gt", "le", "lt")

# ---- register(..., bounds=...) ----


def patience(
    *,
    objective: Objective,
    max_epochs: int,
    patience: int = 2,
    factor: float = 0.5,
    label: str = "a",
    limit: int,
    seed: int | None = None,
) -> tuple[int, float, int]:
    """A stand-in early stopper whose options cover every kind of declaration."""
    return patience, factor, limit


class StopperPlugin:
    """A throwaway plugin that registers `patience` with the given bounds."""

    def __init__(self, bounds: Any) -> None:
        self.bounds = bounds

    @hookimpl
    def tuneyard_register_early_stoppers(self, register: Any) -> None:
        register("patience", patience, bounds=self.bounds)


def registry_with(bounds: Any) -> PluginRegistry:
    registry = PluginRegistry()
    assert registry.add_plugin(StopperPlugin(bounds), name="bounded", distribution="test", version="1")
    return registry


def test_register_stores_bounds_and_create_enforces_them() -> None:
    registry = registry_with({"patience": Bounds(ge=1), "factor": Bounds(gt=0, lt=1), "limit": Bounds(le=10)})
    entry = registry.get("early_stopper", "patience")
    assert entry.param("patience").bounds == Bounds(ge=1)
    assert entry.param("factor").bounds.describe() == "> 0, < 1"
    assert entry.param("label").bounds is None and not registry.errors
    injected = {"objective": Objective("val_accuracy"), "max_epochs": 3}
    assert registry.create("early_stopper", "patience", {"patience": 1, "limit": 10}, **injected) == (1, 0.5, 10)
    for options, why in [
        ({"patience": 0, "limit": 1}, "option 'patience' of early_stopper 'patience': must be >= 1, got 0"),
        ({"factor": 1.0, "limit": 1}, "option 'factor' of early_stopper 'patience': must be < 1, got 1"),
        ({"limit": 11}, "option 'limit' of early_stopper 'patience': must be <= 10, got 11"),
    ]:
        with pytest.raises(ValueError) as err:
            registry.create("early_stopper", "patience", options, **injected)
        assert str(err.value) == why


def test_bounds_on_a_required_option_or_one_defaulting_to_none_are_accepted() -> None:
    registry = registry_with({"limit": Bounds(ge=0), "seed": Bounds(ge=0, lt=2**32)})
    assert not registry.errors
    assert registry.get("early_stopper", "patience").param("seed").bounds == Bounds(ge=0, lt=2**32)


BAD_DECLARATIONS = [
    ("unknown option", {"patients": Bounds(ge=1)}, "bounds name 'patients', which is not an option of the factory"),
    ("non-numeric option", {"label": Bounds(ge=1)}, "only int and float options take bounds, and this one takes str"),
    ("default outside", {"patience": Bounds(ge=3)}, "the default 2 is outside them (must be >= 3, got 2)"),
    ("default outside, exclusive", {"factor": Bounds(gt=0.5)}, "the default 0.5 is outside them (must be > 0.5"),
    ("not a Bounds", {"patience": {"ge": 1}}, "expected tuneyard.plugins.api.Bounds, got {'ge': 1}"),
    ("a limit that is text", {"patience": Bounds(ge="1")}, "ge must be a number, got '1'"),
    ("a limit that is NaN", {"factor": Bounds(lt=math.nan)}, "lt must be a number, got nan"),
    ("a limit that is a bool", {"patience": Bounds(le=True)}, "le must be a number, got True"),
    ("no value fits", {"limit": Bounds(ge=5, le=1)}, ">= 5, <= 1 admits no value"),
    ("no value fits, open ends", {"limit": Bounds(gt=1, lt=1)}, "> 1, < 1 admits no value"),
    ("not a mapping", [Bounds(ge=1)], "bounds must map option names to Bounds, got list"),
]


@pytest.mark.parametrize(("label", "bounds", "why"), BAD_DECLARATIONS, ids=[b[0] for b in BAD_DECLARATIONS])
def test_a_bad_bounds_declaration_is_a_load_error_not_a_crash(label: str, bounds: Any, why: str) -> None:
    registry = registry_with(bounds)
    assert registry.names("early_stopper") == []
    [error] = registry.errors
    assert error.source == "bounded"
    assert error.message.startswith("plugin 'bounded' cannot register early_stopper 'patience': "), error.message
    assert why in error.message, error.message


# ---- every built-in bound: past it refused, at it (when inclusive) built ----

REGISTRY = PluginRegistry.load(entry_points=False)
BOUNDED = [(e.kind, e.name, p) for e in REGISTRY.entries() for p in e.parameters if p.bounds is not None]

# Options a plugin needs beside the one at its bound, where the default would break a cross-option rule.
COMPANIONS: dict[tuple[str, str, str], dict[str, Any]] = {
    ("augmentation", "randaugment", "num_magnitude_bins"): {"magnitude": 0},
    ("augmentation", "random_erasing", "scale_low"): {"scale_high": 1.0},
    ("dataset", "synthetic", "num_samples"): {"num_classes": 2},
}


def test_every_numeric_builtin_option_declares_bounds() -> None:
    unbounded = [
        (e.kind, e.name, p.name)
        for e in REGISTRY.entries()
        for p in e.parameters
        if p.type in ("int", "float") and p.bounds is None
    ]
    assert unbounded == []
    assert not REGISTRY.errors


def _with_required(kind: str, name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` plus the required built-in options (image_folder's path, csv's path and target: what
    `data_root` makes)."""
    required = {"image_folder": {"path": "images"}, "csv": {"path": "table.csv", "target": "y"}}
    return {**required.get(name, {}), **options} if kind == "dataset" else options


def _past(value: float, limit: str, kind: str) -> float:
    """The nearest value outside the limit: the limit itself when exclusive, one step beyond when inclusive."""
    if limit in ("gt", "lt"):
        return int(value) if kind == "int" else float(value)
    down = limit == "ge"
    if kind == "int":
        return int(value) - 1 if down else int(value) + 1
    return math.nextafter(float(value), -math.inf if down else math.inf)


def _cases(inclusive_only: bool) -> list[Any]:
    cases = []
    for kind, name, param in BOUNDED:
        for limit in LIMITS:
            value = getattr(param.bounds, limit)
            if value is not None and (not inclusive_only or limit in ("ge", "le")):
                cases.append(pytest.param(kind, name, param, limit, value, id=f"{kind}-{name}-{param.name}-{limit}"))
    return cases


@pytest.mark.parametrize(("kind", "name", "param", "limit", "value"), _cases(inclusive_only=False))
def test_a_value_just_past_a_builtin_bound_is_refused(
    kind: str, name: str, param: Any, limit: str, value: float
) -> None:
    bad = _past(value, limit, param.type)
    with pytest.raises(ValueError) as err:
        REGISTRY.create(kind, name, _with_required(kind, name, {param.name: bad}))  # refused before the factory
    assert str(err.value).startswith(f"option {param.name!r} of {kind} {name!r}: must be "), err.value


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with a tiny class-per-folder image set (train/ and val/, no test/)."""
    root = tmp_path_factory.mktemp("bounds-data")
    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / "images" / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (4, 4), (60 * i, 100 if label == "a" else 200, 30)).save(folder / f"{i}.png")
    (root / "table.csv").write_text("x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(10)))
    return root


def _build(kind: str, name: str, options: dict[str, Any], root: Path) -> None:
    """Build the plugin through the registry with what the trainer would inject, and use it once."""
    image = (3, 8, 8)
    if kind == "optimizer":
        REGISTRY.create(kind, name, options, args=([torch.nn.Parameter(torch.ones(2, 2))],))
    elif kind == "lr_scheduler":
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)
        REGISTRY.create(kind, name, options, args=(optimizer,), epochs=4, steps_per_epoch=3)
    elif kind == "augmentation":
        transform = REGISTRY.create(kind, name, options, input_shape=image, num_classes=4)
        if REGISTRY.get(kind, name).batch_level:
            transform(torch.rand(4, *image), torch.arange(4))
        else:
            transform(torch.rand(*image))
    elif kind == "model":
        model = REGISTRY.create(kind, name, options, input_shape=image, num_classes=4)
        assert model(torch.rand(2, *image)).shape == (2, 4)
    elif kind == "dataset":
        splits = REGISTRY.create(kind, name, _with_required(kind, name, options), root=str(root))
        assert len(splits.train) > 0
    elif kind == "searcher":
        space = (Parameter("x", FloatRange(0.0, 1.0)), Parameter("n", IntRange(1, 8)))
        searcher = REGISTRY.create(kind, name, options, space=space, objective=Objective("val_accuracy"), seed=0)
        assert searcher.suggest(0) is not None
    elif kind == "early_stopper":
        stopper = REGISTRY.create(kind, name, options, objective=Objective("val_accuracy"), max_epochs=9)
        stopper.report(0, 1, 0.5)


FILE_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")


@pytest.mark.parametrize(("kind", "name", "param", "limit", "value"), _cases(inclusive_only=True))
def test_a_builtin_is_built_with_an_option_at_its_inclusive_bound(
    kind: str, name: str, param: Any, limit: str, value: float, data_root: Path
) -> None:
    at = int(value) if param.type == "int" else float(value)
    options = {**COMPANIONS.get((kind, name, param.name), {}), param.name: at}
    if kind == "dataset" and name in FILE_DATASETS:
        # No torchvision files here: accepted means the factory ran past its option checks to the files.
        with pytest.raises(FileNotFoundError):
            _build(kind, name, options, data_root)
    else:
        _build(kind, name, options, data_root)


# ---- over gRPC: CreateStudy refuses, ListPlugins, grpcurl and the CLI show ----

ISSUE_VALUES = [
    (
        "asha grace_period 0",
        {"early_stopping": {"name": "asha", "options": {"grace_period": 0}}},
        "spec.early_stopping.options.grace_period",
        "must be >= 1, got 0",
    ),
    (
        "asha reduction_factor 1",
        {"early_stopping": {"name": "asha", "options": {"reduction_factor": 1}}},
        "spec.early_stopping.options.reduction_factor",
        "must be >= 2, got 1",
    ),
    (
        "tpe n_startup_trials -1",
        {"searcher": {"name": "tpe", "options": {"n_startup_trials": -1}}},
        "spec.searcher.options.n_startup_trials",
        "must be >= 0, got -1",
    ),
    (
        "grid num_points 0",
        {"searcher": {"name": "grid", "options": {"num_points": 0}}},
        "spec.searcher.options.num_points",
        "must be >= 1, got 0",
    ),
    (
        "adam beta2 1",
        {"training": {**tiny_spec()["training"], "optimizer": {"name": "adam", "options": {"beta2": 1}}}},
        "spec.training.optimizer.options.beta2",
        "must be < 1, got 1",
    ),
    (
        "searched dropout up to 1",
        {"search_space": [{"name": "model.dropout", "float_range": {"low": 0, "high": 1}}]},
        "spec.search_space[0].float_range.high",
        "must be < 1, got 1",
    ),
]


def _study_count(stub: Any) -> int:
    return len(stub.ListStudies(pb.ListStudiesRequest(page_size=1000)).studies)


@pytest.mark.parametrize(("label", "change", "field", "why"), ISSUE_VALUES, ids=[v[0] for v in ISSUE_VALUES])
def test_create_study_refuses_an_option_past_its_bound_naming_the_field(
    stub: Any, label: str, change: dict[str, Any], field: str, why: str
) -> None:
    before = _study_count(stub)
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(tiny_spec(**change))))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert err.value.details() == f"{field}: {why}"
    assert _study_count(stub) == before


def test_create_study_accepts_an_option_at_its_bound(stub: Any) -> None:
    change = {"early_stopping": {"name": "asha", "options": {"grace_period": 1, "reduction_factor": 2}}}
    study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(tiny_spec(**change))))
    stub.CancelStudy(pb.CancelStudyRequest(study_id=study.study_id))


def _param(plugins: Any, kind: str, name: str, option: str) -> Any:
    plugin = next(p for p in plugins if p.kind == kind and p.name == name)
    return next(p for p in plugin.parameters if p.name == option)


def test_list_plugins_shows_the_declared_bounds(stub: Any) -> None:
    plugins = stub.ListPlugins(pb.ListPluginsRequest()).plugins
    for kind, name, param in BOUNDED:
        listed = _param(plugins, kind, name, param.name)
        for limit in LIMITS:
            declared = getattr(param.bounds, limit)
            assert listed.HasField(limit) == (declared is not None), (kind, name, param.name, limit)
            assert not listed.HasField(limit) or getattr(listed, limit) == declared
    grace = _param(plugins, "early_stopper", "asha", "grace_period")
    assert (grace.ge, grace.HasField("gt"), grace.HasField("le"), grace.HasField("lt")) == (1, False, False, False)
    momentum = _param(plugins, "optimizer", "sgd", "momentum")
    assert (momentum.ge, momentum.lt) == (0, 1)  # a limit of 0 is there, not absent
    assert not any(_param(plugins, "searcher", "sobol", "scramble").HasField(limit) for limit in LIMITS)


def test_grpcurl_list_plugins_shows_the_bounds_as_json(server: Any) -> None:
    proc = subprocess.run(
        [
            grpcurl_binary(),
            "-plaintext",
            "-d",
            '{"kind": "early_stopper"}',
            server.address,
            "tuneyard.v1.TrainingService/ListPlugins",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert '"name": "grace_period"' in proc.stdout and '"ge": 1' in proc.stdout, proc.stdout
    assert '"ge": 2' in proc.stdout  # reduction_factor


def test_cli_plugins_shows_the_bounds(server: Any) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tuneyard.client.cli", "--server", server.address, "plugins", "early_stopper"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "400", "PATH": ""},
    )
    assert out.returncode == 0, out.stderr
    assert "grace_period:int=1 [>= 1]" in out.stdout and "reduction_factor:int=3 [>= 2]" in out.stdout, out.stdout
