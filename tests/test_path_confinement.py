"""Path options (`DataPath`) must lie inside the server's data root: CreateStudy refuses every escape
with INVALID_ARGUMENT naming the field, stores nothing, and accepts paths that stay inside.

One in-process server on loopback with its own data root, laid out as:

    <tmp>/outside/secret.pt, <tmp>/outside/images/      (what no request may reach)
    <tmp>/root/images/, <tmp>/root/weights.pt           (the data root)
    <tmp>/root/out -> ../outside                        (a folder link pointing out)
    <tmp>/root/stolen.pt -> ../outside/secret.pt        (a file link pointing out)
    <tmp>/root/hop1 -> hop2 -> <tmp>/outside            (a chain of links ending outside)
    <tmp>/root/nested/up -> ../../outside               (a link deeper down the path)
    <tmp>/root/loop -> loop                             (a link loop)
    <tmp>/root/alias -> images, <tmp>/root/w.pt -> weights.pt   (links that stay inside)
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from support import TINY_SPEC, to_proto

from tuneyard.plugins.api import resolve_data_path
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    top = tmp_path_factory.mktemp("confinement")
    outside, root = top / "outside", top / "data" / "datasets"
    (outside / "images").mkdir(parents=True)
    (outside / "secret.pt").write_bytes(b"not yours")
    (root / "images").mkdir(parents=True)
    (root / "nested").mkdir()
    (root / "weights.pt").write_bytes(b"yours")
    os.symlink("../../outside", root / "out")
    os.symlink("../../outside/secret.pt", root / "stolen.pt")
    os.symlink("hop2", root / "hop1")
    os.symlink(outside, root / "hop2")
    os.symlink("../../../outside", root / "nested" / "up")
    os.symlink("loop", root / "loop")
    os.symlink("images", root / "alias")
    os.symlink(root / "weights.pt", root / "w.pt")
    return top


@pytest.fixture(scope="module")
def served(tree: Path) -> Iterator[Any]:
    from tuneyard.server.app import start_server

    # The data root is given explicitly, and is also the default (<data dir>/datasets).
    handle = start_server(data_dir=tree / "data", devices="cpu", cpu_slots=1, data_root=str(tree / "data" / "datasets"))
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def rpc(served: Any) -> Iterator[service_pb2_grpc.TrainingServiceStub]:
    with grpc.insecure_channel(served.address) as channel:
        yield service_pb2_grpc.TrainingServiceStub(channel)


def image_folder(path: str) -> dict[str, Any]:
    spec = copy.deepcopy(TINY_SPEC)
    spec["dataset"] = {"name": "image_folder", "options": {"path": path, "size": 8}}
    spec["budget"] = {"max_trials": 1}
    return spec


def weights_file(path: str) -> dict[str, Any]:
    spec = copy.deepcopy(TINY_SPEC)
    spec["model"] = {"name": "finetune", "options": {"weights_file": path}}
    spec["search_space"] = []
    spec["budget"] = {"max_trials": 1}
    return spec


def searched(head: str, values: list[str]) -> dict[str, Any]:
    spec = copy.deepcopy(TINY_SPEC)
    spec["dataset"] = {"name": "image_folder", "options": {"path": "images", "size": 8}}
    spec["search_space"] = [{"name": head, "choice": {"values": values}}]
    if head.startswith("model."):
        spec["model"] = {"name": "finetune"}
    spec["budget"] = {"max_trials": 1}
    return spec


DATASET = "spec.dataset.options.path"
WEIGHTS = "spec.model.options.weights_file"
CHOICE = "spec.search_space[0].choice.values[1]"

# (label, spec builder, value, field, reason); `{outside}` and `{root}` are filled in per test.
ESCAPES = [
    ("dot-dot", image_folder, "../../outside/images", DATASET, "escapes the data root"),
    ("dot-dot after a folder", image_folder, "a/../../../outside", DATASET, "escapes the data root"),
    ("dot-dot that stays inside on paper", image_folder, "out/../images", DATASET, "has a '..' component"),
    ("absolute path elsewhere", image_folder, "{outside}/images", DATASET, "escapes the data root"),
    ("absolute system file", weights_file, "/etc/passwd", WEIGHTS, "escapes the data root"),
    ("symlinked folder pointing out", image_folder, "out/images", DATASET, "symbolic link out of the data root"),
    ("symlinked folder itself", image_folder, "out", DATASET, "symbolic link out of the data root"),
    ("symlinked file pointing out", weights_file, "stolen.pt", WEIGHTS, "symbolic link out of the data root"),
    ("chain of symlinks", image_folder, "hop1/images", DATASET, "symbolic link out of the data root"),
    ("symlink deeper down the path", weights_file, "nested/up/secret.pt", WEIGHTS, "symbolic link out"),
    ("absolute path through a symlink", weights_file, "{root}/out/secret.pt", WEIGHTS, "symbolic link out"),
    ("symlink loop", image_folder, "loop/x", DATASET, "cannot be resolved"),
    ("NUL byte", weights_file, "weights.pt\x00.png", WEIGHTS, "NUL byte"),
    ("overlong component", image_folder, "a" * 256, DATASET, "longer than 255 bytes"),
    ("overlong path", weights_file, "a/" * 2049, WEIGHTS, "longer than 4096 characters"),
]

SEARCHED_ESCAPES = [
    ("dataset path among choices", "dataset.path", ["images", "../../outside/images"], "escapes the data root"),
    ("weights file among choices", "model.weights_file", ["weights.pt", "stolen.pt"], "symbolic link out"),
    ("absolute path among choices", "model.weights_file", ["", "{outside}/secret.pt"], "escapes the data root"),
]

ALLOWED = [
    ("relative folder", image_folder, "images"),
    ("the data root itself", image_folder, ""),
    ("a folder not made yet", image_folder, "images/later"),
    ("absolute path inside", image_folder, "{root}/images"),
    ("symlink that stays inside", image_folder, "alias"),
    ("relative file", weights_file, "weights.pt"),
    ("file symlink that stays inside", weights_file, "w.pt"),
    ("no file", weights_file, ""),
]


def fill(value: str, tree: Path) -> str:
    return value.format(outside=tree / "outside", root=tree / "data" / "datasets")


def cancel(rpc: service_pb2_grpc.TrainingServiceStub, study_id: str) -> None:
    """Cancels an accepted study; one whose trial already failed (an empty folder) has ended by itself."""
    try:
        rpc.CancelStudy(pb.CancelStudyRequest(study_id=study_id), timeout=30)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()


def study_ids(rpc: service_pb2_grpc.TrainingServiceStub) -> list[str]:
    return [s.study_id for s in rpc.ListStudies(pb.ListStudiesRequest(page_size=1000), timeout=30).studies]


def assert_refused(
    rpc: service_pb2_grpc.TrainingServiceStub, spec: dict[str, Any], field: str, reason: str, hidden: str = "\x00"
) -> None:
    """CreateStudy answers INVALID_ARGUMENT `field: ...reason...` without `hidden` in it, and stores nothing."""
    before = study_ids(rpc)
    with pytest.raises(grpc.RpcError) as refused:
        rpc.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    details = refused.value.details()
    assert details.startswith(f"{field}: "), details
    assert reason in details, details
    assert hidden not in details  # where a link leads is not revealed
    assert study_ids(rpc) == before  # nothing stored
    assert rpc.GetServerInfo(pb.GetServerInfoRequest(), timeout=30).version  # still serving


@pytest.mark.parametrize(("label", "build", "value", "field", "reason"), ESCAPES, ids=[e[0] for e in ESCAPES])
def test_a_path_that_escapes_the_data_root_is_refused(rpc, tree, label, build, value, field, reason):
    hidden = "\x00" if "{outside}" in value else str(tree / "outside")
    assert_refused(rpc, build(fill(value, tree)), field, reason, hidden)


@pytest.mark.parametrize(("label", "head", "values", "reason"), SEARCHED_ESCAPES, ids=[e[0] for e in SEARCHED_ESCAPES])
def test_a_searched_path_that_escapes_is_refused(rpc, tree, label, head, values, reason):
    assert_refused(rpc, searched(head, [fill(v, tree) for v in values]), CHOICE, reason)


@pytest.mark.parametrize(("label", "build", "value"), ALLOWED, ids=[a[0] for a in ALLOWED])
def test_a_path_inside_the_data_root_is_accepted(rpc, tree, label, build, value):
    study = rpc.CreateStudy(pb.CreateStudyRequest(spec=to_proto(build(fill(value, tree)))), timeout=30)
    try:
        assert study.study_id in study_ids(rpc)
    finally:
        cancel(rpc, study.study_id)


def test_searched_paths_inside_the_data_root_are_accepted(rpc):
    study = rpc.CreateStudy(pb.CreateStudyRequest(spec=to_proto(searched("model.weights_file", ["", "w.pt"]))))
    cancel(rpc, study.study_id)


def test_path_options_are_listed_with_type_path(rpc):
    plugins = rpc.ListPlugins(pb.ListPluginsRequest(), timeout=30).plugins
    types = {(p.kind, p.name, q.name): q.type for p in plugins for q in p.parameters}
    for name in ("mnist", "fashion_mnist", "cifar10", "cifar100", "image_folder"):
        assert types[("dataset", name, "path")] == "path"
    assert types[("model", "finetune", "weights_file")] == "path"
    assert types[("model", "finetune", "weights")] == "str"  # a name, not a path


def test_the_configured_data_root_is_the_one_enforced(tmp_path: Path):
    """With --data-root elsewhere, <data dir>/datasets is outside and the configured root inside."""
    from tuneyard.server.app import start_server

    root = tmp_path / "shared-root"
    (root / "images").mkdir(parents=True)
    (tmp_path / "data" / "datasets" / "images").mkdir(parents=True)
    handle = start_server(data_dir=tmp_path / "data", devices="cpu", cpu_slots=1, data_root=str(root))
    try:
        assert handle.studies.validator.data_root == str(root)
        with grpc.insecure_channel(handle.address) as channel:
            stub = service_pb2_grpc.TrainingServiceStub(channel)
            assert_refused(stub, image_folder(str(tmp_path / "data" / "datasets" / "images")), DATASET, "escapes")
            study = stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(image_folder(str(root / "images")))))
            cancel(stub, study.study_id)
    finally:
        handle.stop()


def test_a_data_root_reached_through_a_link_accepts_absolute_paths_under_either_name(tmp_path: Path):
    (tmp_path / "real" / "images").mkdir(parents=True)
    os.symlink(tmp_path / "real", tmp_path / "link")
    for root in (tmp_path / "real", tmp_path / "link"):
        for value in (tmp_path / "real" / "images", tmp_path / "link" / "images"):
            assert resolve_data_path(str(root), str(value)) == tmp_path / "real" / "images"


def test_without_a_data_root_every_path_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="no data root"):
        resolve_data_path("", "images")


# ---- at trial time: the plugins confine with the same function ----

# A trial's dataset gets the server's data root as `root`; the finetune model reads it from
# TUNEYARD_DATA_ROOT, which the server's workers set. Each refuses what CreateStudy refuses, for
# the same reason, and says nothing of where the server keeps its files beyond what was sent.
TRIAL_PLUGINS = ["image_folder", "mnist", "finetune"]


@pytest.fixture(scope="module")
def registry() -> Any:
    from tuneyard.plugins.manager import PluginRegistry

    return PluginRegistry.load()


def open_in_trial(registry: Any, monkeypatch: pytest.MonkeyPatch, tree: Path, plugin: str, value: str) -> None:
    """What a trial's worker does with `value` (the spec having been accepted, or never checked)."""
    root = str(tree / "data" / "datasets")
    if plugin == "finetune":
        monkeypatch.setenv("TUNEYARD_DATA_ROOT", root)
        registry.create("model", "finetune", {"weights_file": value}, input_shape=(3, 8, 8), num_classes=2)
    else:
        options = {"path": value, "size": 8} if plugin == "image_folder" else {"path": value}
        registry.create("dataset", plugin, options, root=root)


def assert_names_no_server_path(message: str, sent: str, tree: Path) -> None:
    assert str(tree) not in message.replace(sent, ""), message
    assert str(Path.cwd()) not in message.replace(sent, ""), message


@pytest.mark.parametrize("plugin", TRIAL_PLUGINS)
@pytest.mark.parametrize(("label", "build", "value", "field", "reason"), ESCAPES, ids=[e[0] for e in ESCAPES])
def test_a_trial_refuses_what_create_study_refuses(
    registry, monkeypatch, tree, plugin, label, build, value, field, reason
):
    sent = fill(value, tree)
    with pytest.raises(ValueError) as refused:
        open_in_trial(registry, monkeypatch, tree, plugin, sent)
    message = str(refused.value)
    option = "weights_file" if plugin == "finetune" else "path"
    assert message.startswith(f"option {option!r}: ") and reason in message, message
    assert_names_no_server_path(message, sent, tree)


@pytest.mark.parametrize("plugin", TRIAL_PLUGINS)
@pytest.mark.parametrize("value", ["../../outside/images", "images/../images", "out/../../outside", "../datasets"])
def test_dot_dot_is_refused_at_trial_time_even_where_it_stays_inside(registry, monkeypatch, tree, plugin, value):
    with pytest.raises(ValueError, match="escapes the data root|has a '..' component") as refused:
        open_in_trial(registry, monkeypatch, tree, plugin, value)
    assert_names_no_server_path(str(refused.value), value, tree)


def test_a_file_found_under_a_folder_that_links_out_is_named_inside_the_data_root(registry, tmp_path):
    """`imgs/b -> <outside>/b`: a class folder whose images lie outside the data root."""
    from PIL import Image

    root, outside = tmp_path / "root", tmp_path / "outside"
    for folder in (root / "imgs" / "a", outside / "b"):
        folder.mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (4, 4), (i, 0, 0)).save(folder / f"{i}.png")
    os.symlink(outside / "b", root / "imgs" / "b")
    with pytest.raises(ValueError, match="symbolic link out of the data root") as refused:
        registry.create("dataset", "image_folder", {"path": "imgs", "size": 8}, root=str(root))
    assert "'imgs/b/0.png'" in str(refused.value)
    assert str(tmp_path) not in str(refused.value)


# Values CreateStudy accepts; the trial may still fail (an empty folder, a file that is not a state
# dict), but never because the path leaves the data root. (The data root itself is left out: the
# link `out` in it makes the files found under it leave the root, which the trial rightly refuses.)
TRIAL_ALLOWED = [a for a in ALLOWED if a[0] != "the data root itself"]


@pytest.mark.parametrize(("label", "build", "value"), TRIAL_ALLOWED, ids=[a[0] for a in TRIAL_ALLOWED])
def test_a_trial_accepts_what_create_study_accepts(registry, monkeypatch, tree, label, build, value):
    plugin = "finetune" if build is weights_file else "image_folder"
    try:
        open_in_trial(registry, monkeypatch, tree, plugin, fill(value, tree))
    except (ValueError, FileNotFoundError) as exc:
        assert "data root" not in str(exc), exc


def test_finetune_outside_a_trial_refuses_dot_dot_too(registry, monkeypatch, tree):
    """Called from Python with no data root, the working directory stands in for it, under the same rule."""
    monkeypatch.delenv("TUNEYARD_DATA_ROOT", raising=False)
    monkeypatch.chdir(tree / "data" / "datasets")
    for value in ("../../outside/secret.pt", f"{tree}/data/../outside/secret.pt"):
        with pytest.raises(ValueError, match="'..' component|escapes") as refused:
            registry.create("model", "finetune", {"weights_file": value}, input_shape=(3, 8, 8), num_classes=2)
        assert_names_no_server_path(str(refused.value), value, tree)
