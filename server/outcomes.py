"""How a trial's run ended, from the worker's last message: the state and the forensics to store.

Workers end a task with ("done", key, result), ("error", key, traceback, forensics),
("infeasible", key, reason) or ("crashed", key, why, forensics). A failure is classified as
"crash" (the process died), "timeout" (it stopped sending heartbeats and was killed), "oom" (out
of GPU memory) or "error" (the training code raised).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OOM_MARKS = ("OutOfMemoryError", "CUDA out of memory")


def is_oom(text: str) -> bool:
    return any(mark in text for mark in OOM_MARKS)


@dataclass
class Ending:
    """A trial run's end as the runner sees it."""

    kind: str  # done | error | infeasible | crashed
    result: dict[str, Any] = field(default_factory=dict)  # of a "done" run
    error: str = ""
    reason: str = ""  # crash | timeout | oom | error | stopped (killed after a stop request)
    forensics: dict[str, Any] = field(default_factory=dict)

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
            "exit_code": self.forensics.get("exit_code"),
            "exit_signal": self.forensics.get("exit_signal", ""),
            "stderr_tail": self.forensics.get("stderr_tail", ""),
        }


def ending_of(msg: tuple[Any, ...]) -> Ending:
    """Reads a worker's final message."""
    kind = msg[0]
    if kind == "done":
        return Ending(kind, result=dict(msg[2]))
    if kind == "infeasible":
        return Ending(kind, error=str(msg[2]))
    forensics = dict(msg[3]) if len(msg) > 3 else {}
    if kind == "error":
        return Ending(kind, error=str(msg[2]), reason="oom" if is_oom(str(msg[2])) else "error", forensics=forensics)
    reason = forensics.get("reason", "crash")
    if reason == "crash" and is_oom(forensics.get("stderr_tail", "")):
        reason = "oom"  # the CUDA allocator aborted the process
    return Ending("crashed", error=str(msg[2]), reason=reason, forensics=forensics)
