"""Population-based training through the server (issue 18): `early_stopping: pbt`.

Real servers on loopback train the built-in `mlp` on `iris` in real worker processes, one trial at a
time, so who exploits whom is decided by the training alone. Trial 1 learns (lr 0.1), trial 2 barely
does (lr 1e-4): at epoch 2 trial 2 is the population's worst and goes on from trial 1's checkpoint of
epoch 2. With a perturbation factor of 1 it then trains exactly trial 1's epochs 3 and 4 (the weights,
optimizer state and batch order are the source's); with factors 0.5 and 2 its learning rate moves.
A server SIGKILLed once the exploit is journaled ends the study with the same history and metrics.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from support import tiny_spec, to_proto, watch_all

from tuneyard.v1 import service_pb2 as pb

EPOCHS = 4
COMPARED = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")


def pbt_spec(factors: list[float], **overrides: Any) -> dict[str, Any]:
    spec = tiny_spec(
        dataset={"name": "iris"},
        model={"name": "mlp", "options": {"width": 16}},
        training={
            "epochs": EPOCHS,
            "batch_size": 16,
            "precision": "fp32",
            "seed": 0,
            "optimizer": {"name": "sgd", "options": {"lr": 0.1, "momentum": 0.9}},
        },
        search_space=[{"name": "optimizer.lr", "float_range": {"low": 1e-5, "high": 1.0, "log": True}}],
        initial_configs=[{"optimizer.lr": 0.1}, {"optimizer.lr": 0.0001}],  # run first, in order
        early_stopping={
            "name": "pbt",
            "options": {"interval": 2, "quantile": 0.5, "perturbation_factors": factors, "resample_probability": 0},
        },
        budget={"max_trials": 2, "max_concurrent_trials": 1},
    )
    spec.update(overrides)
    return spec


def create(stub: Any, spec: dict[str, Any]) -> str:
    return str(stub.CreateStudy(pb.CreateStudyRequest(spec=to_proto(spec)), timeout=30).study_id)


def trials_of(stub: Any, study_id: str) -> dict[int, pb.Trial]:
    trials = stub.ListTrials(pb.ListTrialsRequest(study_id=study_id), timeout=30).trials
    return {t.trial_id: t for t in trials}


def epochs(trial: pb.Trial) -> list[dict[str, float]]:
    return [{k: m.values[k] for k in COMPARED} for m in trial.metrics]


def history(trial: pb.Trial) -> list[dict[str, Any]]:
    return [json_format.MessageToDict(change, preserving_proto_field_name=True) for change in trial.config_history]


def test_the_worst_trial_goes_on_from_the_best_ones_checkpoint(stub):
    study_id = create(stub, pbt_spec([1.0]))
    events = watch_all(stub, study_id)
    trials = trials_of(stub, study_id)
    assert stub.GetStudy(pb.GetStudyRequest(study_id=study_id)).state == pb.STUDY_COMPLETED
    source, exploiter = trials[1], trials[2]
    assert history(source) == []
    assert history(exploiter) == [{"epoch": 2, "source_trial_id": 1, "config": {"optimizer.lr": 0.1}}]
    assert exploiter.config["optimizer.lr"] == pytest.approx(0.0001)  # what it started with
    assert exploiter.state == pb.TRIAL_COMPLETED and exploiter.epochs_completed == EPOCHS
    mine, theirs = epochs(exploiter), epochs(source)
    assert mine[1]["val_accuracy"] < theirs[1]["val_accuracy"]  # why it was the worst at epoch 2
    for got, want in zip(mine[2:], theirs[2:], strict=True):  # the source's state, the same config
        assert got == pytest.approx(want, abs=1e-6)
    exploited = [e.trial_exploited for e in events if e.WhichOneof("event") == "trial_exploited"]
    assert [(e.trial_id, e.change.epoch, e.change.source_trial_id) for e in exploited] == [(2, 2, 1)]


def test_the_explored_learning_rate_is_the_one_it_trains_with(stub):
    study_id = create(stub, pbt_spec([0.5, 2.0]))
    watch_all(stub, study_id)
    exploiter = trials_of(stub, study_id)[2]
    (change,) = history(exploiter)
    lr = change["config"]["optimizer.lr"]
    assert lr in (pytest.approx(0.05), pytest.approx(0.2))  # the source's 0.1 times a factor
    assert [m.values["lr"] for m in exploiter.metrics] == pytest.approx([0.0001, 0.0001, lr, lr])


def test_pbt_is_refused_for_fused_trials_and_ask_tell_studies(stub):
    for spec, why in (
        (pbt_spec([1.0], resources={"fuse": 2}), "it cannot train fused"),
        (
            {
                "external": {},
                "search_space": [{"name": "x", "float_range": {"low": 0.0, "high": 1.0}}],
                "objective": {"metric": "value", "mode": "MINIMIZE"},
                "early_stopping": {"name": "pbt"},
                "budget": {"max_trials": 4},
            },
            "not for a study its clients evaluate",
        ),
    ):
        with pytest.raises(grpc.RpcError) as err:
            create(stub, spec)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("spec.early_stopping:") and why in err.value.details()


def test_a_kill_after_the_exploit_is_journaled_ends_the_same(stub, server_process, tmp_path):
    unkilled_id = create(stub, pbt_spec([0.5, 2.0]))
    watch_all(stub, unkilled_id)
    unkilled = trials_of(stub, unkilled_id)
    proc = server_process(tmp_path / "data")
    killed_stub = proc.stub()
    study_id = create(killed_stub, pbt_spec([0.5, 2.0]))
    deadline = time.monotonic() + 120
    while not trials_of(killed_stub, study_id).get(2, pb.Trial()).config_history:
        assert time.monotonic() < deadline, "the exploit never came"
        time.sleep(0.02)
    proc.kill()  # SIGKILL: its workers die with it
    again = server_process(tmp_path / "data").stub()
    watch_all(again, study_id)
    trials = trials_of(again, study_id)
    for trial_id, trial in trials.items():
        assert trial.state == pb.TRIAL_COMPLETED
        assert history(trial) == history(unkilled[trial_id])
        for got, want in zip(epochs(trial), epochs(unkilled[trial_id]), strict=True):
            assert got == pytest.approx(want, abs=1e-6)


def test_the_population_runs_in_turns_and_the_first_trial_is_judged_once_the_others_caught_up(stub):
    """Four trials on one slot: each runs to epoch 2 and waits until all four have; trial 1, the worst
    there though it arrived first, is then judged against all of them and exploits the best."""
    lrs = [0.0001, 0.1, 0.05, 0.02]
    spec = pbt_spec(
        [1.0],
        initial_configs=[{"optimizer.lr": lr} for lr in lrs],
        budget={"max_trials": 4, "max_concurrent_trials": 1},
    )
    spec["early_stopping"]["options"]["quantile"] = 0.25
    study_id = create(stub, spec)
    events = watch_all(stub, study_id)
    progress = [(e.trial_progress.trial_id, e.trial_progress.epoch) for e in events if e.HasField("trial_progress")]
    first_past_two = next(i for i, (_, epoch) in enumerate(progress) if epoch > 2)
    assert sorted(progress[:first_past_two]) == [(t, e) for t in (1, 2, 3, 4) for e in (1, 2)]
    trials = trials_of(stub, study_id)
    at_two = {t: trials[t].metrics[1].values["val_accuracy"] for t in trials}
    best = max(at_two, key=lambda t: (at_two[t], -t))
    assert min(at_two, key=at_two.get) == 1
    assert history(trials[1]) == [{"epoch": 2, "source_trial_id": best, "config": {"optimizer.lr": lrs[best - 1]}}]
    assert all(history(trials[t]) == [] for t in (2, 3, 4))
    assert all(t.state == pb.TRIAL_COMPLETED and t.epochs_completed == EPOCHS for t in trials.values())
