"""How a trial run that ended goes on (`outcomes.decide`) and the state it is stored with
(`outcomes.final_state`): the one place each is decided, checked case by case."""

from __future__ import annotations

import pytest

from tuneyard.server.study.domain import TrialState
from tuneyard.server.study.outcomes import Ending, Finish, RunAgain, decide, final_state

DONE = Ending("done", result={"final_metrics": {"val_accuracy": 0.9}, "stopped": False})
STOPPED = Ending("done", result={"final_metrics": {"val_accuracy": 0.8}, "stopped": True})
STOPPED_EARLY = Ending("done", result={"final_metrics": {}, "stopped": True})
OOM = Ending("error", error="CUDA out of memory", reason="oom")
RAISED = Ending("error", error="ValueError: no", reason="error")
CRASH = Ending("crashed", error="worker died", reason="crash", exit_code=-9, exit_signal="SIGKILL")
HANG = Ending("crashed", error="no heartbeat", reason="timeout")
KILLED_AFTER_STOP = Ending("crashed", error="killed", reason="stopped")
INFEASIBLE = Ending("infeasible", error="too deep")
KEPT = {"val_accuracy": 0.7}


def run(ending: Ending, stop: str | None = None, share: float = 1.0, retries: int = 0, max_retries: int = 0):
    return decide(
        ending,
        stop_reason=stop,
        share=share,
        units=share,
        retries=retries,
        max_retries=max_retries,
        kept_metrics=lambda: dict(KEPT),
    )


@pytest.mark.parametrize(
    ("case", "decision"),
    [
        (run(OOM, share=0.25), RunAgain(units=0.5, retry=False)),
        (run(OOM, share=0.5), RunAgain(units=1.0, retry=False)),
        (run(OOM, share=1.0), Finish(OOM)),  # a whole device: it would run out again
        (run(OOM, stop="cancelled", share=0.5), Finish(OOM)),
        (run(CRASH, max_retries=2), RunAgain(units=1.0, retry=True)),
        (run(HANG, retries=1, max_retries=2), RunAgain(units=1.0, retry=True)),
        (run(CRASH, retries=2, max_retries=2), Finish(CRASH)),
        (run(CRASH), Finish(CRASH)),
        (run(RAISED, max_retries=5), Finish(RAISED)),  # an exception recurs: never retried
        (
            run(CRASH, stop="pruned", max_retries=5),
            Finish(Ending("done", result={"final_metrics": KEPT, "stopped": True})),
        ),
        (
            run(KILLED_AFTER_STOP, stop="cancelled"),
            Finish(Ending("done", result={"final_metrics": KEPT, "stopped": True})),
        ),
        (run(DONE, max_retries=3), Finish(DONE)),
        (run(INFEASIBLE, max_retries=3), Finish(INFEASIBLE)),
    ],
)
def test_decide(case, decision):
    assert case == decision


@pytest.mark.parametrize(
    ("ending", "stop", "state"),
    [
        (DONE, None, TrialState.COMPLETED),
        (DONE, "pruned", TrialState.COMPLETED),  # it finished before the stop took effect
        (STOPPED, "pruned", TrialState.PRUNED),
        (STOPPED, "cancelled", TrialState.CANCELLED),
        (STOPPED, "halted", TrialState.CANCELLED),
        (STOPPED, "deadline", TrialState.COMPLETED),  # it has metrics: it counts
        (STOPPED_EARLY, "deadline", TrialState.CANCELLED),
        (INFEASIBLE, None, TrialState.INFEASIBLE),
        (CRASH, None, TrialState.FAILED),
        (RAISED, "cancelled", TrialState.FAILED),
    ],
)
def test_final_state(ending, stop, state):
    assert final_state(ending, stop) == state
