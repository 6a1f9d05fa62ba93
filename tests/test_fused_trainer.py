"""Fused groups (issue 17, part 3) against solo runs: every member's metrics per epoch, its checkpoints, its end.

Each group's K members differ in their optimizer options (lr, weight decay, momentum, ...), label
smoothing or schedule options; each member's per-epoch train/val loss and accuracy and lr must equal a
solo `Trainer` run of its settings within 1e-4, for every built-in optimizer on `mlp`/`iris`, and for
`simple_cnn` and a batch-norm `convnet` on `digits`. Checkpoints go both ways (a group member resumes
solo, solo trials resume as a group), a stopped member leaves while the others match to the end, a
diverging member fails alone, and `group_problem` refuses what the group trainer does not implement.

Run as a script (`python tests/test_fused_trainer.py`) it prints the group's wall time against K solo runs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tuneyard.plugins.api import Objective
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.execution.messages import TrainTask
from tuneyard.server.study.settings import Component, TrainingSettings, TrialSettings
from tuneyard.server.worker.fused import epoch as fused_epoch
from tuneyard.server.worker.fused import trainer
from tuneyard.server.worker.fused.trainer import GroupTrainer, group_problem
from tuneyard.server.worker.trainer import Trainer

ATOL = 1e-4
COMPARED = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")
REGISTRY = PluginRegistry.load(entry_points=False)
OBJECTIVE = Objective("val_accuracy", "max")
Reports = list[tuple[int, dict[str, float]]]


def trial(
    dataset: str,
    model: Component,
    optimizer: str,
    options: dict[str, Any],
    *,
    epochs: int = 2,
    batch_size: int = 32,
    schedule: Component | None = None,
    **training: Any,
) -> TrialSettings:
    return TrialSettings(
        Component(dataset),
        model,
        TrainingSettings(
            epochs=epochs,
            batch_size=batch_size,
            precision="fp32",
            seed=1,
            optimizer=Component(optimizer, options),
            lr_scheduler=schedule,
            **training,
        ),
    )


MLP = Component("mlp", {"width": 16})
CNN = Component("simple_cnn", {"num_filters": 4, "num_conv_layers": 1})
CONVNET = Component("convnet", {"depth": 2, "width": 4, "batch_norm": True})


def _tasks(settings: list[TrialSettings], root: Path, resume: bool = False) -> list[TrainTask]:
    return [
        TrainTask(i, s, str(root / f"t{i}" / "checkpoint.pt"), OBJECTIVE, resume=resume) for i, s in enumerate(settings)
    ]


@functools.cache
def _group_trainer() -> GroupTrainer:
    return GroupTrainer(REGISTRY, "cpu")


@functools.cache
def _solo_trainer() -> Trainer:
    return Trainer(REGISTRY, "cpu")


def solo(settings: TrialSettings, checkpoint: Path, stop_after: int = 0, resume: bool = False) -> tuple[Any, Reports]:
    reports: Reports = []
    task = TrainTask(0, settings, str(checkpoint), OBJECTIVE, resume=resume)
    result = _solo_trainer().train(
        task,
        lambda e, m: reports.append((e, m)),
        lambda: stop_after > 0 and bool(reports) and reports[-1][0] >= stop_after,
    )
    return result, reports


_SOLO_RUNS: dict[str, tuple[Any, Reports]] = {}


def _solo_cached(settings: TrialSettings) -> tuple[Any, Reports]:
    """A solo run of these settings (run once per test session: several tests compare with it)."""
    key = repr(settings)
    if key not in _SOLO_RUNS:
        with tempfile.TemporaryDirectory() as folder:
            _SOLO_RUNS[key] = solo(settings, Path(folder) / "checkpoint.pt")
    return _SOLO_RUNS[key]


def group(
    settings: list[TrialSettings], root: Path, stop: Any = lambda trial_id, reports: False, resume: bool = False
) -> tuple[dict[int, Any], dict[int, Reports]]:
    reports: dict[int, Reports] = {i: [] for i in range(len(settings))}
    results = _group_trainer().train_group(
        _tasks(settings, root, resume),
        lambda trial_id, epoch, metrics: reports[trial_id].append((epoch, metrics)),
        lambda trial_id: stop(trial_id, reports[trial_id]),
    )
    return results, reports


def assert_same(fused: Reports, alone: Reports) -> None:
    assert [e for e, _ in fused] == [e for e, _ in alone]
    for (epoch, a), (_, b) in zip(fused, alone, strict=True):
        for key in COMPARED:
            assert a[key] == pytest.approx(b[key], abs=ATOL), (epoch, key)
        assert set(a) == set(b)  # the same metric names


def assert_group_matches_solo(settings: list[TrialSettings], root: Path) -> dict[int, Reports]:
    assert group_problem(_tasks(settings, root), REGISTRY) is None
    results, reports = group(settings, root)
    for i, each in enumerate(settings):
        alone, alone_reports = _solo_cached(each)
        assert_same(reports[i], alone_reports)
        assert results[i]["epochs"] == alone["epochs"] and results[i]["stopped"] is False
    finals = {round(reports[i][-1][1]["train_loss"], 6) for i in reports}
    assert len(finals) == len(settings)  # the members did train apart
    return reports


OPTIMIZERS: dict[str, list[dict[str, Any]]] = {
    "sgd": [{"lr": 0.1, "momentum": 0.9}, {"lr": 0.05, "nesterov": True, "momentum": 0.5}, {"lr": 0.02}],
    "adagrad": [{"lr": 0.05}, {"lr": 0.1, "lr_decay": 0.01}, {"lr": 0.02, "weight_decay": 0.01}],
    "rmsprop": [{"lr": 0.01}, {"lr": 0.005, "centered": True, "momentum": 0.5}, {"lr": 0.002, "weight_decay": 0.01}],
    "adam": [{"lr": 0.01}, {"lr": 0.003, "amsgrad": True}, {"lr": 0.02, "weight_decay": 0.01}],
    "adamw": [{"lr": 0.01}, {"lr": 0.003, "weight_decay": 0.1}, {"lr": 0.02, "no_decay_norm_and_bias": False}],
    "nadam": [{"lr": 0.01}, {"lr": 0.005, "decoupled_weight_decay": True, "weight_decay": 0.1}, {"lr": 0.02}],
    "radam": [{"lr": 0.01}, {"lr": 0.005, "beta2": 0.9}, {"lr": 0.02, "weight_decay": 0.01}],
}


SCHEDULES = {  # an epoch schedule, a monitored one (val_loss, per member) and a batch one
    "sgd": Component("cosine"),
    "adam": Component("cosine", {"min_lr": 1e-3}),
    "adagrad": Component("reduce_on_plateau", {"patience": 0, "factor": 0.5, "threshold": 0.5}),
    "nadam": Component("linear_warmup_cosine", {"warmup_epochs": 0.5}),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_matches_solo_runs_on_mlp_iris(name, tmp_path):
    schedule = SCHEDULES.get(name)
    clip = 0.5 if name == "rmsprop" else 0.0  # per-member gradient clipping
    settings = [
        trial("iris", MLP, name, options, epochs=3, schedule=schedule, grad_clip_norm=clip)
        for options in OPTIMIZERS[name]
    ]
    assert_group_matches_solo(settings, tmp_path)


def test_simple_cnn_on_digits_with_a_step_schedule(tmp_path):
    settings = [
        trial(
            "digits",
            CNN,
            "sgd",
            {"lr": lr, "momentum": 0.9, "weight_decay": wd},
            schedule=Component("step", {"step_size": 1, "gamma": g}),
        )
        for lr, wd, g in ((0.05, 0.0, 0.5), (0.02, 1e-3, 0.1), (0.1, 0.0, 0.9))
    ]
    assert_group_matches_solo(settings, tmp_path)


def test_a_group_trained_in_parts_of_the_stack_matches_solo_runs(tmp_path, monkeypatch):
    """Each member its own part (`epoch.train_parts`), with dropout and label smoothing per member:
    every member's metrics stay its solo run's."""
    monkeypatch.setattr(fused_epoch, "TRAIN_PART_BYTES", 1)
    parts: list[tuple[int, int]] = []  # (first, stop) of each part trained

    def spied(*args: Any) -> Any:
        parts.append((args[4].start, args[4].stop))
        return fused_epoch.train_part(*args)

    monkeypatch.setattr(trainer, "train_part", spied)
    settings = [
        trial("digits", CNN, "sgd", {"lr": lr, "momentum": 0.9}, epochs=2, label_smoothing=ls)
        for lr, ls in ((0.05, 0.0), (0.02, 0.1), (0.1, 0.2))
    ]
    assert_group_matches_solo(settings, tmp_path)
    assert set(parts) == {(0, 1), (1, 2), (2, 3)}


def test_batch_norm_convnet_with_label_smoothing_and_a_batch_schedule(tmp_path):
    schedule = Component("onecycle")
    settings = [
        trial("digits", CONVNET, "adam", {"lr": lr}, batch_size=64, schedule=schedule, label_smoothing=ls)
        for lr, ls in ((0.01, 0.0), (0.003, 0.1), (0.02, 0.2))
    ]
    assert_group_matches_solo(settings, tmp_path)


ADAM_STEP = [
    trial("iris", MLP, "adam", {"lr": lr}, epochs=3, schedule=Component("step", {"step_size": 1, "gamma": g}))
    for lr, g in ((0.01, 0.5), (0.003, 0.9), (0.02, 0.7))
]


def test_group_checkpoints_resume_solo_and_solo_checkpoints_resume_as_a_group(tmp_path):
    import torch

    from tuneyard.server.worker.checkpoints import resume_states

    results, _ = group(ADAM_STEP, tmp_path / "group", stop=lambda trial_id, reports: len(reports) >= 2)
    assert all(r["stopped"] and r["epochs"] == 2 for r in results.values())
    for i, each in enumerate(ADAM_STEP):
        member = tmp_path / "group" / f"t{i}" / "checkpoint.pt"
        alone = tmp_path / f"solo{i}" / "checkpoint.pt"
        solo(each, alone, stop_after=2)
        fused_state, solo_state = resume_states(member)[0], resume_states(alone)[0]
        assert fused_state["parts"].keys() == solo_state["parts"].keys()
        assert fused_state["parts"]["scheduler"] == solo_state["parts"]["scheduler"]
        fused_opt, solo_opt = fused_state["parts"]["optimizer"], solo_state["parts"]["optimizer"]
        assert fused_opt["param_groups"] == solo_opt["param_groups"]
        for pid, entry in solo_opt["state"].items():
            for key, value in entry.items():
                assert torch.allclose(fused_opt["state"][pid][key], value, atol=1e-5), (pid, key)
        _, resumed = solo(each, member, resume=True)  # a group member goes on solo
        assert_same(resumed, _solo_cached(each)[1][1:])
    _, regrouped = group(ADAM_STEP, tmp_path / "group", resume=True)  # ... and epoch-2 solo checkpoints as a group
    for i, each in enumerate(ADAM_STEP):
        solo(each, tmp_path / "back" / f"t{i}" / "checkpoint.pt", stop_after=1)
    _, from_solo = group(ADAM_STEP, tmp_path / "back", resume=True)
    for i, each in enumerate(ADAM_STEP):
        assert_same(from_solo[i], _solo_cached(each)[1])  # epoch 1 again, then 2 and 3
        assert_same(regrouped[i], [_solo_cached(each)[1][-1]])  # already done: the last epoch, reported again


class _Killed(Exception):
    """Stands for the worker's death: the group run ends where it is, without leaving or ending."""


def _killed_after(epochs: int) -> Any:
    def stop(trial_id: int, reports: Reports) -> bool:
        if trial_id == 0 and len(reports) >= epochs:
            raise _Killed
        return False

    return stop


def _pointers(root: Path, members: int) -> list[Path]:
    from tuneyard.server.worker.checkpoints import group_pointer_path

    return [group_pointer_path(root / f"t{i}" / "checkpoint.pt") for i in range(members)]


@pytest.mark.parametrize("written", [1, 2])
def test_a_killed_group_resumes_fused_from_its_one_file_and_matches_the_solo_runs(written, tmp_path):
    """A group writes one resume file an epoch for all its members, which their folders name; a run
    killed after epoch `written` leaves that file, and the group goes on from it."""
    from tuneyard.server.worker.checkpoints import resume_path

    with pytest.raises(_Killed):
        group(ADAM_STEP, tmp_path, stop=_killed_after(written))
    assert len(list(tmp_path.glob("t0/group-resume.*.pt"))) == 1
    assert all(pointer.exists() for pointer in _pointers(tmp_path, len(ADAM_STEP)))
    assert not any(resume_path(tmp_path / f"t{i}" / "checkpoint.pt").exists() for i in range(len(ADAM_STEP)))
    assert not any((tmp_path / f"t{i}" / "checkpoint.pt").exists() for i in range(3))  # written on leaving
    assert group_problem(_tasks(ADAM_STEP, tmp_path, resume=True), REGISTRY) is None
    results, resumed = group(ADAM_STEP, tmp_path, resume=True)
    for i, each in enumerate(ADAM_STEP):
        assert_same(resumed[i], _solo_cached(each)[1][written - 1 :])  # epoch `written` reported again
        assert results[i]["epochs"] == 3 and resume_path(tmp_path / f"t{i}" / "checkpoint.pt").exists()
        assert torch.load(tmp_path / f"t{i}" / "checkpoint.pt", weights_only=True)["epoch"] == 3
    assert not list(tmp_path.glob("t*/group-resume.*.pt")) and not any(p.exists() for p in _pointers(tmp_path, 3))


def test_a_kill_while_a_group_names_its_file_leaves_members_apart_who_resume_from_their_latest(tmp_path):
    """A group run's first file is written before the members' folders name it. A kill between:
    on a fresh run a member without a state starts the group over (fused, from the start); after a
    resume, members named at the new file are an epoch ahead of those still at the old one, so the
    group is refused and each member resumes solo from its latest state."""
    with pytest.raises(_Killed):
        group(ADAM_STEP, tmp_path / "fresh", stop=_killed_after(1))
    _pointers(tmp_path / "fresh", 3)[0].unlink()  # member 0 was not named yet
    _, restarted = group(ADAM_STEP, tmp_path / "fresh", resume=True)
    for i, each in enumerate(ADAM_STEP):
        assert_same(restarted[i], _solo_cached(each)[1])  # every epoch again, fused

    root = tmp_path / "resumed"
    with pytest.raises(_Killed):
        group(ADAM_STEP, root, stop=_killed_after(1))
    at_first = [pointer.read_text() for pointer in _pointers(root, 3)]
    with pytest.raises(_Killed):
        group(ADAM_STEP, root, stop=_killed_after(2), resume=True)  # epoch 1 reported again, then 2
    for pointer, text in list(zip(_pointers(root, 3), at_first, strict=True))[1:]:
        pointer.write_text(text)  # members 1 and 2 still name the first run's file
    assert "different epochs ([1, 2])" in _problem(ADAM_STEP, root, resume=True)
    for i, each in enumerate(ADAM_STEP):
        _, alone = solo(each, root / f"t{i}" / "checkpoint.pt", resume=True)
        assert_same(alone, _solo_cached(each)[1][(1 if i else 2) - 1 :])


def test_a_member_killed_after_its_last_epoch_resumes_solo_into_its_own_files(tmp_path):
    """Nothing is left to train, so the solo run writes the member's group entry to its own files at once."""
    from tuneyard.server.worker.checkpoints import group_pointer_path

    with pytest.raises(_Killed):
        group(ADAM_STEP, tmp_path, stop=_killed_after(3))  # the last epoch saved and reported, then the kill
    member = tmp_path / "t1" / "checkpoint.pt"
    assert not member.exists() and group_pointer_path(member).exists()
    result, resumed = solo(ADAM_STEP[1], member, resume=True)
    assert result["epochs"] == 3
    assert_same(resumed, _solo_cached(ADAM_STEP[1])[1][-1:])  # its last epoch, reported again
    assert torch.load(member, weights_only=True)["epoch"] == 3 and not group_pointer_path(member).exists()


def test_stopped_members_leave_and_the_others_match_their_solo_runs(tmp_path):
    polls = {2: 0}

    def stop(trial_id: int, reports: Reports) -> bool:
        if trial_id == 2 and len(reports) == 1:
            polls[2] += 1
            return polls[2] > 3  # before epoch 2's third batch (the poll after epoch 1's report is the first)
        return trial_id == 1 and len(reports) >= 1

    settings = [*ADAM_STEP, trial("iris", MLP, "adam", {"lr": 0.05}, epochs=3, schedule=Component("step"))]
    results, reports = group(settings, tmp_path, stop=stop)
    for i in (1, 2):
        assert results[i] == {"final_metrics": reports[i][0][1], "epochs": 1, "stopped": True}
        assert_same(reports[i], _solo_cached(settings[i])[1][:1])
    for i in (0, 3):
        assert results[i]["epochs"] == 3 and not results[i]["stopped"]
        assert_same(reports[i], _solo_cached(settings[i])[1])


def test_a_diverging_member_fails_alone(tmp_path):
    settings = [trial("iris", MLP, "sgd", {"lr": lr}, epochs=3) for lr in (0.1, 1e12, 0.05)]
    with pytest.raises(FloatingPointError):
        _solo_cached(settings[1])
    results, reports = group(settings, tmp_path)
    assert results[1] == {"error": "training loss diverged at epoch 1"} and reports[1] == []
    for i in (0, 2):
        assert_same(reports[i], _solo_cached(settings[i])[1])


def _problem(settings: list[TrialSettings], root: Path, resume: bool = False) -> str:
    problem = group_problem(_tasks(settings, root, resume), REGISTRY)
    assert problem is not None
    return problem


def test_group_problem_refuses_what_it_does_not_implement(tmp_path):
    base = trial("iris", MLP, "sgd", {"lr": 0.1})
    training = base.training

    def changed(**fields: Any) -> TrialSettings:
        return dataclasses.replace(base, training=dataclasses.replace(training, **fields))

    assert "differs from member 0 outside" in _problem([base, changed(batch_size=16)], tmp_path)
    assert "differs from member 0 outside" in _problem([base, changed(seed=2)], tmp_path)
    assert "differs from member 0 outside" in _problem([base, changed(optimizer=Component("adam"))], tmp_path)
    assert "gradient accumulation" in _problem([changed(grad_accumulation_steps=2)] * 2, tmp_path)
    assert "EMA" in _problem([changed(ema_decay=0.5)] * 2, tmp_path)
    digits = trial("digits", CNN, "sgd", {"lr": 0.1})
    mixup = dataclasses.replace(
        digits, training=dataclasses.replace(digits.training, augmentations=(Component("mixup"),))
    )
    assert "batch-level augmentation 'mixup'" in _problem([mixup, mixup], tmp_path)
    cycling = changed(lr_scheduler=Component("onecycle", {"cycle_momentum": True}))
    assert "cycles momentum" in _problem([cycling, cycling], tmp_path)
    unfusable = dataclasses.replace(
        digits, model=Component("finetune", {"backbone": "resnet18", "unfreeze_at_epoch": 1})
    )
    assert "on_epoch_start" in _problem([unfusable, unfusable], tmp_path)
    solo(base, tmp_path / "t0" / "checkpoint.pt", stop_after=2)  # two epochs ahead of member 1: no common epoch
    assert "different epochs ([0, 2])" in _problem([base, base], tmp_path, resume=True)
    assert group_problem(_tasks([base, changed(label_smoothing=0.1)], tmp_path), REGISTRY) is None


def test_prepare_builds_each_member_once_and_its_check_draws_no_random_numbers(tmp_path, monkeypatch):
    """The worker's check and its training share one build (`prepare`); the check's trial forward
    and backward (dropout draws masks) leave the generators where the members' builds left them."""
    members = [trial("digits", Component("mlp", {"width": 16, "dropout": 0.5}), "sgd", {"lr": lr}) for lr in (0.1, 0.2)]
    fresh = GroupTrainer(REGISTRY, "cpu")
    built: list[Component] = []
    build_model = fresh._model
    monkeypatch.setattr(fresh, "_model", lambda model, splits: built.append(model) or build_model(model, splits))
    prepared = fresh.prepare(_tasks(members, tmp_path / "checked"))
    assert not isinstance(prepared, str) and len(built) == len(members)
    after_check = torch.get_rng_state()
    monkeypatch.setattr(trainer, "fusable", lambda models, sample=None: None)
    assert not isinstance(fresh.prepare(_tasks(members, tmp_path / "unchecked")), str)
    assert torch.equal(after_check, torch.get_rng_state())


def test_members_may_differ_in_the_models_fusable_dropout(tmp_path):
    """`simple_cnn` declares dropout fusable (channel-stacked); `convnet` (vmap) and `mlp` (no
    dropout layers at 0) do not."""

    def with_dropout(model: Component, p: float) -> TrialSettings:
        return trial("digits", Component(model.name, {**model.options, "dropout": p}), "sgd", {"lr": 0.1})

    members = [with_dropout(CNN, p) for p in (0.0, 0.2, 0.5)]
    assert group_problem(_tasks(members, tmp_path / "cnn"), REGISTRY) is None
    results, reports = group(members, tmp_path / "group")
    assert all("error" not in r for r in results.values())
    _, alone = solo(members[0], tmp_path / "solo" / "checkpoint.pt")
    assert_same(reports[0], alone)  # the member without dropout is its solo run
    assert reports[1][-1][1]["train_loss"] != reports[0][-1][1]["train_loss"]  # the others dropped units
    for model in (CONVNET, MLP):
        assert "differs from member 0 outside" in _problem([with_dropout(model, p) for p in (0.0, 0.3)], tmp_path)


def _timed(settings: list[TrialSettings], root: Path, repeats: int = 3) -> tuple[float, float]:
    """Seconds for the fused group, and for its members' solo runs one after another (best of `repeats`)."""
    fused, alone = math.inf, math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        group(settings, root / "group")
        fused = min(fused, time.perf_counter() - started)
        started = time.perf_counter()
        for i, each in enumerate(settings):
            solo(each, root / f"solo{i}" / "checkpoint.pt")
        alone = min(alone, time.perf_counter() - started)
    return fused, alone


def main() -> None:
    """Wall time of a fused group against its K solo runs (digits `simple_cnn` and iris `mlp`, 3 epochs)."""
    cases = {
        "digits simple_cnn": lambda lr: trial(
            "digits", CNN, "sgd", {"lr": lr, "momentum": 0.9}, epochs=3, batch_size=64
        ),
        "iris mlp": lambda lr: trial("iris", MLP, "adam", {"lr": lr}, epochs=3, batch_size=16),
    }
    with tempfile.TemporaryDirectory() as folder:
        for make in cases.values():  # datasets loaded, code paths warm
            _timed([make(0.01)] * 2, Path(folder) / "warm", repeats=1)
        for name, make in cases.items():
            for k in (2, 4, 8):
                settings = [make(0.001 * (j + 1)) for j in range(k)]
                fused, alone = _timed(settings, Path(folder) / f"{name}-{k}")
                print(f"{name:18s} K={k}: fused {fused:6.2f} s, {k} solo runs {alone:6.2f} s ({alone / fused:4.1f}x)")


if __name__ == "__main__":
    main()
