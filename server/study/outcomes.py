"""How a trial's run ended, from the task's final message (`messages.Final`): the state and the
forensics to store.

A failure is classified as "crash" (the process died), "timeout" (it stopped sending heartbeats
and was killed), "stopped" (killed after ignoring a stop request), "oom" (out of GPU memory) or
"error" (the training code raised).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tuneyard.server.execution.messages import Crashed, Done, Error, Final, Infeasible
from tuneyard.server.study.domain import TrialState

OOM_MARKS = ("OutOfMemoryError", "CUDA out of memory")


def is_oom(text: str) -> bool:
    return any(mark in text for mark in OOM_MARKS)


@dataclass(frozen=True)
class Ending:
    """A trial run's end as the runner sees it."""

    kind: str  # done | error | infeasible | crashed
    result: dict[str, Any] = field(default_factory=dict)  # of a "done" run
    error: str = ""
    reason: str = ""  # crash | timeout | oom | error | stopped (killed after a stop request)
    exit_code: int | None = None
    exit_signal: str = ""
    stderr_tail: str = ""

    @property
    def failed(self) -> bool:
        return self.kind in ("error", "crashed")

    @property
    def retryable(self) -> bool:
        """A dead or hung process may be the machine's fault; an exception or OOM will recur."""
        return self.kind == "crashed" and self.reason in ("crash", "timeout")

    def failure_fields(self) -> dict[str, Any]:
        """The trial columns that record this failure."""
        return {
            "error": self.error,
            "failure_reason": self.reason,
            "exit_code": self.exit_code,
            "exit_signal": self.exit_signal,
            "stderr_tail": self.stderr_tail,
        }


def ending_of(msg: Final) -> Ending:
    """Reads a task's final message."""
    match msg:
        case Done(result=result):
            return Ending("done", result=dict(result))
        case Infeasible(reason=reason):
            return Ending("infeasible", error=str(reason))
        case Error(traceback=text, stderr_tail=tail):
            return Ending("error", error=str(text), reason="oom" if is_oom(str(text)) else "error", stderr_tail=tail)
        case Crashed(why=why, reason=reason, exit_code=code, exit_signal=signame, stderr_tail=tail):
            if reason == "crash" and is_oom(tail):
                reason = "oom"  # the CUDA allocator aborted the process
            return Ending(
                "crashed", error=str(why), reason=reason, exit_code=code, exit_signal=signame, stderr_tail=tail
            )
    raise TypeError(f"not a final message: {msg!r}")


# ---- what the runner does with an ending ----


@dataclass(frozen=True)
class RunAgain:
    """The trial runs again from its last checkpoint, on `units` of a device. `retry`: it counts
    against `budget.trial_retries` (a crash or hang); an OOM beside other trials does not."""

    units: float
    retry: bool


@dataclass(frozen=True)
class Finish:
    """The trial ends with `ending` (a run killed after a stop request ends as the stopped run it was)."""

    ending: Ending


def decide(
    ending: Ending,
    *,
    stop_reason: str | None,
    share: float,
    units: float,
    retries: int,
    max_retries: int,
    kept_metrics: Callable[[], dict[str, float]],
) -> RunAgain | Finish:
    """How a trial run that ended goes on, the one place that decides it.

    A packed trial out of GPU memory runs again on twice the share; a trial killed because it
    ignored a stop request was stopped, with the metrics it had stored (`kept_metrics`); a crash or
    hang runs again while retries remain; anything else finishes the trial.
    """
    if ending.kind == "error" and ending.reason == "oom" and share < 1 and not stop_reason:
        return RunAgain(units=min(1.0, units * 2), retry=False)
    if ending.kind == "crashed" and stop_reason:
        return Finish(Ending("done", result={"final_metrics": kept_metrics(), "stopped": True}))
    if ending.retryable and not stop_reason and retries < max_retries:
        return RunAgain(units=units, retry=True)
    return Finish(ending)


def final_state(ending: Ending, stop_reason: str | None) -> TrialState:
    """The state a finished trial is stored with. A run that stopped on request is PRUNED (the early
    stopper), CANCELLED (a cancel, a server shutdown, or a deadline before its first epoch) or
    COMPLETED (a deadline after it had metrics)."""
    if ending.kind == "infeasible":
        return TrialState.INFEASIBLE
    if ending.kind != "done":
        return TrialState.FAILED
    reason = stop_reason if ending.result.get("stopped") else None
    if reason == "pruned":
        return TrialState.PRUNED
    if reason in ("cancelled", "halted") or (reason == "deadline" and not ending.result.get("final_metrics")):
        return TrialState.CANCELLED
    return TrialState.COMPLETED
