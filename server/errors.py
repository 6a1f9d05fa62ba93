"""The one table that maps domain errors onto gRPC status codes, used by every RPC."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from tuneyard.server.domain import DomainError, InvalidArgument, NotFound, WrongState

log = logging.getLogger(__name__)

STATUS_OF: dict[type[DomainError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    WrongState: grpc.StatusCode.FAILED_PRECONDITION,
}

F = TypeVar("F", bound=Callable[..., Any])


def _abort(context: grpc.ServicerContext, exc: Exception) -> None:
    for kind, code in STATUS_OF.items():
        if isinstance(exc, kind):
            context.abort(code, str(exc))
    log.exception("unexpected error in RPC")
    context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")


def unary(method: F) -> F:
    """Turns domain errors raised by a unary handler into the mapped status."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
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
        try:
            yield from method(self, request, context)
        except DomainError as exc:
            _abort(context, exc)
        except Exception as exc:  # noqa: BLE001
            _abort(context, exc)

    return wrapper  # type: ignore[return-value]
