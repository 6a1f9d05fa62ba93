"""How a trial's run ended, from the task's final message (`messages.Final`): the state and the
forensics to store.

A failure is classified as "crash" (the process died), "timeout" (it stopped sending heartbeats
and was killed), "stopped" (killed after ignoring a stop request), "oom" (out of GPU memory) or
"error" (the training code raised).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tuneyard.server.messages import Crashed, Done, Error, Final, Infeasible

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
