"""RPC metrics: a gRPC server interceptor counting every call by method and status code, with latency.

Named as go-grpc-prometheus names them, so existing dashboards and alerts fit:
`grpc_server_started_total`, `grpc_server_handled_total{grpc_code}` and the
`grpc_server_handling_seconds` histogram, each labelled `grpc_type`, `grpc_service`, `grpc_method`.
A streaming call is timed until its stream ends (a `WatchStudy` lasts as long as its study).
The interceptor sits before the token check, so refused calls count as UNAUTHENTICATED.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

LABELS = ("grpc_type", "grpc_service", "grpc_method")
# Seconds: ask/tell RPCs take about a millisecond, CreateStudy validates a spec, streams last minutes.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def _kind(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


def _split(method: str) -> tuple[str, str]:
    """'/tuneyard.v1.TrainingService/SuggestTrials' -> ('tuneyard.v1.TrainingService', 'SuggestTrials')."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


def _code_name(context: grpc.ServicerContext, failed: bool) -> str:
    """The status the call ended with: what the handler set or aborted with; else OK, or UNKNOWN when it raised."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "UNKNOWN" if failed else "OK"


class RpcMetrics(grpc.ServerInterceptor):
    """Counts and times every call to a known method (unknown ones are gRPC's UNIMPLEMENTED, left out)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.started = Counter("grpc_server_started", "RPCs started on the server.", LABELS, registry=registry)
        self.handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by status code.",
            (*LABELS, "grpc_code"),
            registry=registry,
        )
        self.seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from an RPC's start to its last response (a stream's end).",
            LABELS,
            buckets=BUCKETS,
            registry=registry,
        )

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        labels = (_kind(handler), *_split(details.method))
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, labels), handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, labels), handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, labels), handler.request_deserializer, handler.response_serializer
            )
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(handler.stream_stream, labels), handler.request_deserializer, handler.response_serializer
        )

    def _done(self, labels: tuple[str, ...], start: float, code: str) -> None:
        self.handled.labels(*labels, code).inc()
        self.seconds.labels(*labels).observe(time.perf_counter() - start)

    def _unary(self, behavior: Callable[[Any, Any], Any], labels: tuple[str, ...]) -> Callable[[Any, Any], Any]:
        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            self.started.labels(*labels).inc()
            start, failed = time.perf_counter(), True
            try:
                response = behavior(request, context)
                failed = False
                return response
            finally:
                self._done(labels, start, _code_name(context, failed))

        return observed

    def _streaming(
        self, behavior: Callable[[Any, Any], Iterator[Any]], labels: tuple[str, ...]
    ) -> Callable[[Any, Any], Iterator[Any]]:
        def observed(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            self.started.labels(*labels).inc()
            start, failed, closed = time.perf_counter(), True, False
            try:
                yield from behavior(request, context)
                failed = False
            except GeneratorExit:  # closed mid-stream: the client went away (or the server is stopping)
                closed = True
                raise
            finally:
                self._done(labels, start, "CANCELLED" if closed else _code_name(context, failed))

        return observed
