"""The one exception type of the client.

Every failure a caller can act on -- a bad spec file, a server that answers
``INVALID_ARGUMENT``, a server that cannot be reached -- surfaces as a
:class:`TuneyardError` carrying a gRPC status code, so callers (and the CLI)
need a single ``except`` clause and can still branch on the code.

:class:`Pruned` and :class:`Infeasible` are not failures of the client: an
external study's evaluation function raises them (or ``ExternalTrial.report``
raises ``Pruned``) to say how its trial ends.
"""

from __future__ import annotations

import grpc

__all__ = ["Infeasible", "Pruned", "TuneyardError", "from_rpc_error"]


class TuneyardError(Exception):
    """A failed tuneyard operation: a gRPC status code plus a human-readable reason.

    ``str(err)`` reads like ``"INVALID_ARGUMENT: spec.budget.max_trials: must be > 0"``.
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}"

    def __repr__(self) -> str:
        return f"TuneyardError({self.code.name}, {self.details!r})"


def from_rpc_error(err: grpc.RpcError) -> TuneyardError:
    """Convert a ``grpc.RpcError`` (raised by stubs) into a :class:`TuneyardError`.

    The raw grpc error is kept as ``__cause__`` by callers using ``raise ... from``.
    """
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    return TuneyardError(code, details or str(err))


class Pruned(Exception):  # noqa: N818 - named for what happened to the trial, as `Infeasible` is
    """Raised by ``ExternalTrial.report`` when the server answers STOP: the early stopper pruned the
    trial, the study was cancelled, or it passed its deadline. ``Client.optimize`` then completes the
    trial with its last reported metrics (the server records it PRUNED when its stopper said so); an
    evaluation function may catch it to clean up, or raise it itself to end a trial early."""


class Infeasible(Exception):
    """Raised by an external study's evaluation function when a configuration cannot run at all:
    ``Client.optimize`` completes the trial TRIAL_INFEASIBLE with the message as its error."""
