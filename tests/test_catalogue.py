"""The built-in catalogue as users see it: `tuneyard plugins` and the example specs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support import BATCH_AUGMENTATIONS, PER_SAMPLE_AUGMENTATIONS, REPO

from tuneyard.client import load_spec
from tuneyard.v1 import service_pb2 as pb

CATALOGUE = {
    "optimizer": ["sgd", "adagrad", "rmsprop", "adam", "adamw", "nadam", "radam"],
    "lr_scheduler": [
        "constant",
        "step",
        "multistep",
        "cosine",
        "onecycle",
        "linear_warmup_cosine",
        "reduce_on_plateau",
    ],
    "augmentation": [*PER_SAMPLE_AUGMENTATIONS, *BATCH_AUGMENTATIONS],
    "model": [
        "simple_cnn",
        "convnet",
        "resnet18",
        "resnet34",
        "resnet50",
        "mobilenet_v3_small",
        "efficientnet_b0",
        "vit_b_16",
        "finetune",
        "mlp",
    ],
    "dataset": [
        "digits",
        "mnist",
        "fashion_mnist",
        "cifar10",
        "cifar100",
        "image_folder",
        "synthetic",
        "diabetes",
        "breast_cancer",
        "wine",
        "iris",
        "csv",
    ],
    "searcher": ["random", "grid", "sobol", "tpe", "cmaes", "evolution", "gp", "bohb"],
    "early_stopper": ["median", "asha", "hyperband", "pbt"],
    "task": ["classification", "regression", "multilabel"],
}

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def test_every_builtin_is_listed_with_documented_options(stub):
    plugins = stub.ListPlugins(pb.ListPluginsRequest()).plugins
    listed = {(p.kind, p.name): p for p in plugins}
    for kind, names in CATALOGUE.items():
        for name in names:
            plugin = listed[(kind, name)]
            assert plugin.distribution == "tuneyard" and plugin.description, (kind, name)
            for param in plugin.parameters:
                assert param.type and param.doc, (kind, name, param.name)
                assert param.required or param.HasField("default"), (kind, name, param.name)


def test_cli_plugins_shows_every_builtin_with_options(server):
    out = subprocess.run(
        [sys.executable, "-m", "tuneyard.client.cli", "--server", server.address, "plugins"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "400", "PATH": ""},
    )
    assert out.returncode == 0, out.stderr
    for names in CATALOGUE.values():
        for name in names:
            assert name in out.stdout
    assert "magnitude" in out.stdout and "unfreeze_at_epoch" in out.stdout and "nesterov" in out.stdout


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_is_a_valid_study(stub, path: Path):
    study = stub.CreateStudy(pb.CreateStudyRequest(spec=load_spec(path)))
    stub.CancelStudy(pb.CancelStudyRequest(study_id=study.study_id))
    assert study.spec.name
