"""Registers TrainingService on a grpc server with request parsing that never raises.

The generated `add_TrainingServiceServicer_to_server` parses with `FromString`; when that raises,
grpc answers INTERNAL ("Exception deserializing request!"). Bad bytes are bad input, so here a
request that does not parse becomes a `MalformedRequest`, which the `errors.unary` / `errors.streaming`
decorators refuse with INVALID_ARGUMENT. The handlers are built from the service descriptor, so
every RPC of the .proto is covered without a hand-kept list.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import message, message_factory
from google.protobuf.descriptor import MethodDescriptor

from tuneyard.server.api.errors import MalformedRequest
from tuneyard.v1 import service_pb2

SERVICE = service_pb2.DESCRIPTOR.services_by_name["TrainingService"]


def _reason(exc: message.DecodeError) -> str:
    """The parser's complaint without its "Error parsing message with type ...:" preamble."""
    return str(exc).rsplit("': ", 1)[-1] or "cannot be parsed"


def tolerant_parser(cls: type[message.Message]) -> Callable[[bytes], Any]:
    """`cls.FromString` that returns a `MalformedRequest` instead of raising on corrupt bytes."""
    name = cls.DESCRIPTOR.full_name

    def parse(data: bytes) -> message.Message | MalformedRequest:
        try:
            return cls.FromString(data)
        except message.DecodeError as exc:
            return MalformedRequest(name, _reason(exc))

    return parse


def _handler(servicer: Any, method: MethodDescriptor) -> grpc.RpcMethodHandler:
    if method.client_streaming:
        raise NotImplementedError(f"{method.full_name}: client-streaming RPCs are not wired")
    request = message_factory.GetMessageClass(method.input_type)
    response = message_factory.GetMessageClass(method.output_type)
    make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
    return make(
        getattr(servicer, method.name),
        request_deserializer=tolerant_parser(request),
        response_serializer=response.SerializeToString,
    )


def add_training_service(servicer: Any, server: grpc.Server) -> None:
    """What the generated `add_TrainingServiceServicer_to_server` does, with tolerant parsing."""
    handlers = {method.name: _handler(servicer, method) for method in SERVICE.methods}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
