"""The gRPC server that grok-server and grok-router both build: grok.serving.v1.GenerationService beside the
standard health service and server reflection (v1 and v1alpha), with the transport options they share.

The service's methods are registered with lenient deserializers: a request message that does not parse (a
string field that is not UTF-8, a truncated message) reaches the method as an `Undecodable`, which the method
answers with INVALID_ARGUMENT, where grpc's own deserialization failure would be UNKNOWN."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grok_rpc import reflection

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GenerationService"].full_name
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

SHARED_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", -1),
    # Fail loudly when the port is taken instead of silently sharing it with another process.
    ("grpc.so_reuseport", 0),
    # A unary Generate sends nothing while the engine decodes: client keepalive pings in that window must
    # not count as abuse (GOAWAY "too_many_pings" would fail every call on the connection).
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_permit_without_calls", 1),
)


class Undecodable:
    """A request message that did not parse; `details` says which message and why (for INVALID_ARGUMENT)."""

    def __init__(self, kind: str, why: str) -> None:
        self.details = f"the request is not a valid {kind}: {why}"


def lenient(message: Any) -> Callable[[bytes], Any]:
    """A deserializer for `message` that returns an Undecodable instead of raising."""

    def parse(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except DecodeError as err:
            return Undecodable(message.DESCRIPTOR.full_name, str(err))

    return parse


def add_generation_service(servicer: pb_grpc.GenerationServiceServicer, server: grpc.aio.Server) -> None:
    """Registers GenerationService as the generated code does, with lenient deserializers: every method must
    answer an `Undecodable` request with INVALID_ARGUMENT (its `details`)."""
    unary, stream = grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler
    handlers = {
        "Generate": unary(servicer.Generate, lenient(pb.GenerateRequest),
                          pb.GenerateResponse.SerializeToString),
        "GenerateStream": stream(servicer.GenerateStream, lenient(pb.GenerateRequest),
                                 pb.GenerateResponse.SerializeToString),
        "Tokenize": unary(servicer.Tokenize, lenient(pb.TokenizeRequest),
                          pb.TokenizeResponse.SerializeToString),
        "GetModelInfo": unary(servicer.GetModelInfo, lenient(pb.GetModelInfoRequest),
                              pb.ModelInfo.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def generation_server(
    servicer: pb_grpc.GenerationServiceServicer,
    health: health_pb2_grpc.HealthServicer,
    max_receive_message_length: int,
    options: Sequence[tuple[str, int]] = (),
    interceptors: Sequence[Any] = (),
) -> grpc.aio.Server:
    """A grpc.aio server with `servicer` (registered by add_generation_service), `health` and reflection over
    both, not yet bound to a port."""
    server = grpc.aio.server(
        interceptors=list(interceptors),
        options=[("grpc.max_receive_message_length", max_receive_message_length), *SHARED_OPTIONS, *options],
    )
    add_generation_service(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable([SERVICE_NAME, HEALTH_SERVICE_NAME], server)
    return server
