"""The one table that maps domain errors onto gRPC status codes, used by every RPC."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from tuneyard.server.study.domain import (
    DomainError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    StoreDamaged,
    StoreError,
    StoreFull,
    StoreUnavailable,
    Unavailable,
    WrongState,
)

log = logging.getLogger(__name__)

STATUS_OF: dict[type[DomainError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    WrongState: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    # Failures of the store itself (see `sqlite_file.store_error`): the request was fine, the server's store is not.
    StoreDamaged: grpc.StatusCode.DATA_LOSS,
    StoreFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    StoreError: grpc.StatusCode.UNAVAILABLE,  # any other (StoreInvalid is raised at open, before serving)
}

F = TypeVar("F", bound=Callable[..., Any])
# Details travel percent-encoded in a trailer, up to 12 bytes a character; clients refuse trailers over
# 16 KiB (and then see RESOURCE_EXHAUSTED, not our status). The field path comes first, so it survives.
MAX_DETAILS_CHARS = 1000


@dataclass(frozen=True)
class MalformedRequest:
    """Stands in for a request whose bytes did not parse (see `wire`), so the handler can refuse it.

    grpc itself would answer INTERNAL for a request it cannot deserialize; bad input is ours to
    report as INVALID_ARGUMENT.
    """

    message: str
    why: str


def _refuse_malformed(request: Any, context: grpc.ServicerContext) -> None:
    if isinstance(request, MalformedRequest):
        context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, _bounded(f"request: not a valid {request.message}: {request.why}")
        )


def _bounded(details: str) -> str:
    """Error details that echo a huge input (a 100 kB name) are cut, so the client still gets them."""
    return details if len(details) <= MAX_DETAILS_CHARS else details[: MAX_DETAILS_CHARS - 1] + "…"


def _abort(context: grpc.ServicerContext, exc: Exception) -> None:
    if isinstance(exc, StoreError):  # the operator must hear of it, not only the client
        log.error("store failure in RPC: %s", exc)
    for kind, code in STATUS_OF.items():
        if isinstance(exc, kind):
            context.abort(code, _bounded(str(exc)))
    log.exception("unexpected error in RPC")
    context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")


def unary(method: F) -> F:
    """Refuses malformed requests and turns domain errors raised by a unary handler into the mapped status."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        _refuse_malformed(request, context)
        try:
            return method(self, request, context)
        except DomainError as exc:
            _abort(context, exc)
        except Exception as exc:  # noqa: BLE001 - last resort: never crash the server
            _abort(context, exc)

    return wrapper  # type: ignore[return-value]


def streaming(method: F) -> F:
    """Like `unary`, for server-streaming handlers."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        _refuse_malformed(request, context)
        try:
            yield from method(self, request, context)
        except DomainError as exc:
            _abort(context, exc)
        except Exception as exc:  # noqa: BLE001
            _abort(context, exc)

    return wrapper  # type: ignore[return-value]
