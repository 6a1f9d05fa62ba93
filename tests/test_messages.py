"""The worker protocol (`server/execution/messages.py`): every message survives the trip a real executor gives
it (a multiprocessing pipe, Ray's cloudpickle), a task run reports in it, and each final message
maps to the ending the runner stores."""

from __future__ import annotations

import multiprocessing as mp
import pickle
from dataclasses import FrozenInstanceError
from typing import Any

import pytest

from tuneyard.plugins.api import Infeasible as InfeasibleConfig
from tuneyard.plugins.api import Objective
from tuneyard.server.execution.messages import (
    Beat,
    Crashed,
    Done,
    Epoch,
    Error,
    Evaluate,
    EvaluateTask,
    Infeasible,
    Placement,
    Rank,
    Ready,
    Shutdown,
    Stop,
    Train,
    TrainTask,
    Wake,
)
from tuneyard.server.study.outcomes import Ending, ending_of
from tuneyard.server.worker.main import run_task

LOSS = Objective("val_loss", "min")
TASK = TrainTask(7, {}, "c.pt", LOSS)

EVERY_MESSAGE = [
    Train(3, TrainTask(3, {"training": {"epochs": 2}}, "/c/3.pt", LOSS, Placement(2, 0.25), Rank(1, 2, 40000), True)),
    Evaluate("test", EvaluateTask({}, "/c/3.pt", Placement(2))),
    Stop(3),
    Shutdown(),
    Ready(4242),
    Beat(3),
    Epoch(3, 2, {"val_loss": 0.25, "val_accuracy": 0.9}),
    Done(3, {"final_metrics": {"val_loss": 0.25}, "stopped": False}),
    Done("test", {"test_accuracy": 0.875}),
    Error(3, "Traceback (most recent call last):\nValueError: bad", stderr_tail="warning: x"),
    Infeasible(3, "width 0 builds no model"),
    Crashed(3, "worker process 9 died (exit code -9, SIGKILL)", "crash", -9, "SIGKILL", "last line"),
    Wake(),
]
IDS = [type(m).__name__ for m in EVERY_MESSAGE]


@pytest.mark.parametrize("msg", EVERY_MESSAGE, ids=IDS)
def test_every_message_pickles_round_trip(msg: Any) -> None:
    back = pickle.loads(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))
    assert type(back) is type(msg) and back == msg


@pytest.mark.parametrize("msg", EVERY_MESSAGE, ids=IDS)
def test_every_message_crosses_ray_cloudpickle(msg: Any) -> None:
    cloudpickle = pytest.importorskip("ray.cloudpickle")
    back = cloudpickle.loads(cloudpickle.dumps(msg))
    assert type(back) is type(msg) and back == msg


def test_messages_cross_a_multiprocessing_pipe_as_the_local_executor_sends_them() -> None:
    parent, child = mp.get_context("spawn").Pipe()
    try:
        for msg in EVERY_MESSAGE:
            parent.send(msg)
            assert child.recv() == msg
    finally:
        parent.close()
        child.close()


def test_messages_are_frozen_values() -> None:
    msg = Epoch(1, 1, {"val_loss": 1.0})
    with pytest.raises(FrozenInstanceError):
        msg.epoch = 2  # type: ignore[misc]
    assert not hasattr(msg, "__dict__")  # slotted


# ---- run_task: what a worker sends for one task ----


class StandInTrainer:
    """Stands in for `trainer.Trainer`: two epochs, then what `outcome` says."""

    heartbeat: Any = None

    def __init__(self, outcome: str) -> None:
        self.outcome = outcome

    def train(self, task: dict[str, Any], report: Any, should_stop: Any) -> dict[str, Any]:
        for epoch in (1, 2):
            should_stop()
            report(epoch, {"val_loss": 1.0 / epoch})
        if self.outcome == "raise":
            raise ValueError("the model is broken")
        if self.outcome == "infeasible":
            raise InfeasibleConfig("too wide for this device")
        return {"final_metrics": {"val_loss": 0.5}, "stopped": False}

    def evaluate(self, task: EvaluateTask) -> dict[str, Any]:
        return {"test_loss": 0.75, "checkpoint": task.checkpoint}


def sent_by(outcome: str, request: Train | Evaluate) -> list[Any]:
    sent: list[Any] = []
    run_task(StandInTrainer(outcome), request, sent.append, lambda: False)
    return [m for m in sent if not isinstance(m, Beat)]


def test_a_training_task_reports_its_epochs_then_done() -> None:
    assert sent_by("ok", Train(7, TASK)) == [
        Epoch(7, 1, {"val_loss": 1.0}),
        Epoch(7, 2, {"val_loss": 0.5}),
        Done(7, {"final_metrics": {"val_loss": 0.5}, "stopped": False}),
    ]


def test_an_evaluation_task_ends_done_with_its_metrics() -> None:
    assert sent_by("ok", Evaluate("test", EvaluateTask({}, "c.pt"))) == [
        Done("test", {"test_loss": 0.75, "checkpoint": "c.pt"})
    ]


def test_a_raising_task_ends_with_an_error_carrying_the_traceback() -> None:
    final = sent_by("raise", Train(7, TASK))[-1]
    assert isinstance(final, Error) and final.key == 7
    assert "ValueError: the model is broken" in final.traceback and final.stderr_tail == ""


def test_an_infeasible_configuration_ends_infeasible_with_its_reason() -> None:
    assert sent_by("infeasible", Train(7, TASK))[-1] == Infeasible(7, "too wide for this device")


# ---- ending_of: the final message as the runner stores it ----

NO_FORENSICS = {"exit_code": None, "exit_signal": "", "stderr_tail": ""}


def fields(ending: Ending) -> tuple[str, str, str, bool, bool]:
    return ending.kind, ending.error, ending.reason, ending.failed, ending.retryable


def test_done_becomes_a_done_ending_with_a_copy_of_its_result() -> None:
    result = {"final_metrics": {"val_loss": 0.5}, "stopped": True}
    ending = ending_of(Done(3, result))
    assert fields(ending) == ("done", "", "", False, False)
    assert ending.result == result and ending.result is not result


def test_infeasible_keeps_its_reason_as_the_error_and_is_no_failure() -> None:
    ending = ending_of(Infeasible(3, "width 0"))
    assert fields(ending) == ("infeasible", "width 0", "", False, False) and ending.result == {}


def test_an_error_fails_the_trial_for_good_and_keeps_the_stderr_tail() -> None:
    ending = ending_of(Error(3, "Traceback\nValueError: bad", stderr_tail="warning: x"))
    assert fields(ending) == ("error", "Traceback\nValueError: bad", "error", True, False)
    assert ending.failure_fields() == {
        "error": "Traceback\nValueError: bad",
        "failure_reason": "error",
        **NO_FORENSICS,
        "stderr_tail": "warning: x",
    }


@pytest.mark.parametrize("text", ["torch.OutOfMemoryError: CUDA out of memory.", "RuntimeError: CUDA out of memory"])
def test_an_error_out_of_gpu_memory_is_an_oom(text: str) -> None:
    assert fields(ending_of(Error(3, text))) == ("error", text, "oom", True, False)


def test_a_crash_keeps_its_forensics_and_may_be_retried() -> None:
    ending = ending_of(Crashed(3, "worker process 9 died (exit code -9, SIGKILL)", "crash", -9, "SIGKILL", "tail"))
    assert fields(ending) == ("crashed", "worker process 9 died (exit code -9, SIGKILL)", "crash", True, True)
    assert ending.failure_fields() == {
        "error": "worker process 9 died (exit code -9, SIGKILL)",
        "failure_reason": "crash",
        "exit_code": -9,
        "exit_signal": "SIGKILL",
        "stderr_tail": "tail",
    }


@pytest.mark.parametrize(
    ("reason", "tail", "becomes", "retryable"),
    [
        ("timeout", "", "timeout", True),  # a hung process may be the machine's fault
        ("stopped", "", "stopped", False),  # killed after ignoring a stop
        ("crash", "CUDA out of memory; aborting", "oom", False),  # the allocator aborted the process
        ("oom", "killed by Ray's memory monitor", "oom", False),  # Ray said so
        ("timeout", "CUDA out of memory", "timeout", True),  # only a plain crash is read for OOM
    ],
)
def test_how_a_crash_is_classified(reason: str, tail: str, becomes: str, retryable: bool) -> None:
    ending = ending_of(Crashed(3, "died", reason, None, "", tail))
    assert (ending.kind, ending.reason, ending.retryable) == ("crashed", becomes, retryable)
    assert ending.failure_fields() == {"error": "died", "failure_reason": becomes, **NO_FORENSICS, "stderr_tail": tail}


@pytest.mark.parametrize("msg", [Epoch(3, 1, {}), Beat(3), Wake()], ids=["Epoch", "Beat", "Wake"])
def test_a_message_that_ends_no_task_has_no_ending(msg: Any) -> None:
    with pytest.raises(TypeError):
        ending_of(msg)
