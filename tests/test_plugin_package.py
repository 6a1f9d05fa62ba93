"""A real third-party plugin package (tests/plugin_package), pip-installed next to tuneyard, is found
through its `tuneyard` entry point by a freshly started server, listed with its parameter schema,
and used by a study; a package that fails to import is reported without taking the server down."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import json_format
from support import REPO, ServerProcess, tiny_spec, to_proto, watch_all

from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import service_pb2_grpc

PACKAGES = {
    "tuneyard-example-plugin": REPO / "tests" / "plugin_package",
    "tuneyard-broken-plugin": REPO / "tests" / "plugin_package_broken",
}


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def plugin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Both packages pip-installed into this venv, then `tuneyard serve` in a new process (which
    reads the entry points afresh); the packages are uninstalled again afterwards."""
    build = tmp_path_factory.mktemp("plugin-src")
    sources = []
    for name, folder in PACKAGES.items():
        # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
        dest = build / name
        shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        sources.append(str(dest))
    installed = _pip("install", "--no-deps", "--no-build-isolation", "--quiet", *sources)
    try:
        assert installed.returncode == 0, installed.stdout + installed.stderr
        proc = ServerProcess(tmp_path_factory.mktemp("plugin-server-data"))
        try:
            yield proc
        finally:
            proc.stop()
    finally:
        removed = _pip("uninstall", "--yes", *PACKAGES)
        assert removed.returncode == 0, removed.stdout + removed.stderr


@pytest.fixture(scope="module")
def plugin_stub(plugin_server: ServerProcess) -> Iterator[service_pb2_grpc.TrainingServiceStub]:
    with grpc.insecure_channel(plugin_server.address) as channel:
        yield service_pb2_grpc.TrainingServiceStub(channel)


def test_installed_plugin_package_lists_its_optimizer_with_parameter_schema(plugin_stub) -> None:
    response = plugin_stub.ListPlugins(pb.ListPluginsRequest(kind="optimizer"), timeout=30)
    by_name = {p.name: p for p in response.plugins}
    assert {"sgd", "adam", "signsgd"} <= set(by_name), sorted(by_name)

    signsgd = by_name["signsgd"]
    assert signsgd.kind == "optimizer"
    assert signsgd.distribution == "tuneyard-example-plugin"
    assert signsgd.version == "0.1.0"
    assert signsgd.description.startswith("signSGD")
    params = {p.name: p for p in signsgd.parameters}
    assert list(params) == ["lr", "momentum"]
    assert (params["lr"].type, params["lr"].default.number_value, params["lr"].required) == ("float", 0.01, False)
    assert (params["momentum"].type, params["momentum"].default.number_value) == ("float", 0.0)
    assert all(p.doc for p in params.values()), "each parameter is documented from the docstring"


def test_study_using_the_plugin_optimizer_completes(plugin_stub) -> None:
    spec = tiny_spec(
        search_space=[
            {"name": "model.num_conv_layers", "int_range": {"low": 1, "high": 2}},
            {"name": "optimizer.name", "choice": {"values": ["signsgd"]}},
            # An option of the plugin's own schema, searched and validated like a built-in's.
            {
                "name": "optimizer.momentum",
                "float_range": {"low": 0.0, "high": 0.9},
                "condition": {"parent": "optimizer.name", "values": ["signsgd"]},
            },
        ],
        training={
            "epochs": 2,
            "batch_size": 128,
            "optimizer": {"name": "signsgd", "options": {"lr": 0.003}},
            "seed": 0,
        },
        budget={"max_trials": 2, "max_concurrent_trials": 2},
    )
    study = plugin_stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec), request_id="plugin-study"), timeout=30)
    events = watch_all(plugin_stub, study.study_id)
    assert events[-1].study_state.state == pb.STUDY_COMPLETED, events[-1]

    trials = plugin_stub.ListTrials(pb.ListTrialsRequest(study_id=study.study_id), timeout=30).trials
    assert len(trials) == 2
    for trial in trials:
        config = json_format.MessageToDict(trial.config)
        assert trial.state == pb.TRIAL_COMPLETED, (trial.state, trial.error)
        assert config["optimizer.name"] == "signsgd"
        assert 0.0 <= config["optimizer.momentum"] <= 0.9
        assert trial.epochs_completed == 2
        assert 0.0 < trial.final_metrics["val_accuracy"] <= 1.0
    done = plugin_stub.GetStudy(pb.GetStudyRequest(study_id=study.study_id), timeout=30)
    assert done.best_trial.trial_id in {t.trial_id for t in trials}
    assert "test_accuracy" in done.test_metrics


def test_a_trainable_from_an_installed_package_runs_a_study(plugin_stub) -> None:
    spec = {
        "trainable": {"name": "sign_descent"},
        "training": {"epochs": 5, "seed": 2},
        "search_space": [{"name": "trainable.lr", "float_range": {"low": 0.01, "high": 0.2, "log": True}}],
        "objective": {"metric": "val_mse"},
        "budget": {"max_trials": 2, "max_concurrent_trials": 2},
    }
    study = plugin_stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)), timeout=30)
    assert watch_all(plugin_stub, study.study_id)[-1].study_state.state == pb.STUDY_COMPLETED
    listed = plugin_stub.ListPlugins(pb.ListPluginsRequest(kind="trainable"), timeout=30).plugins
    assert [(p.name, p.distribution) for p in listed] == [("sign_descent", "tuneyard-example-plugin")]
    trials = plugin_stub.ListTrials(pb.ListTrialsRequest(study_id=study.study_id), timeout=30).trials
    for trial in trials:
        assert trial.state == pb.TRIAL_COMPLETED, trial.error
        assert [
            m.epoch
            for m in plugin_stub.GetTrial(pb.GetTrialRequest(study_id=study.study_id, trial_id=trial.trial_id)).metrics
        ] == [1, 2, 3, 4, 5]
        assert 0 <= trial.final_metrics["val_mse"] < 5.25  # below the loss of the zero start (0.25 + 1 + 4)


def test_unknown_option_of_a_plugin_optimizer_is_invalid_argument(plugin_stub) -> None:
    spec = tiny_spec(
        search_space=[{"name": "optimizer.name", "choice": {"values": ["signsgd"]}}],
        training={"epochs": 1, "optimizer": {"name": "signsgd", "options": {"betas": 0.9}}},
    )
    with pytest.raises(grpc.RpcError) as err:
        plugin_stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "betas" in err.value.details()


def test_plugin_package_that_fails_to_import_is_reported_and_the_server_keeps_serving(
    plugin_server: ServerProcess, plugin_stub
) -> None:
    response = plugin_stub.ListPlugins(pb.ListPluginsRequest(), timeout=30)
    errors = [e for e in response.load_errors if e.source == "broken"]
    assert len(errors) == 1, list(response.load_errors)
    assert "RuntimeError" in errors[0].message and "on purpose" in errors[0].message
    assert "signsgd" in {p.name for p in response.plugins if p.kind == "optimizer"}
    assert plugin_server.proc.poll() is None

    # `tuneyard plugins` shows the problem to a person, too.
    cli = subprocess.run(
        [sys.executable, "-m", "tuneyard.client.cli", "--server", plugin_server.address, "plugins", "optimizer"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, COLUMNS="200"),
    )
    assert cli.returncode == 0, cli.stderr
    assert "signsgd" in cli.stdout
    assert "load errors" in cli.stdout and "on purpose" in cli.stdout
