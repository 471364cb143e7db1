"""The gRPC server that grok-server and grok-router both build: grok.serving.v1.GenerationService beside the
standard health service and server reflection (v1 and v1alpha), with the transport options they share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grok_server import reflection

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


def generation_server(
    servicer: pb_grpc.GenerationServiceServicer,
    health: health_pb2_grpc.HealthServicer,
    max_receive_message_length: int,
    options: Sequence[tuple[str, int]] = (),
    interceptors: Sequence[Any] = (),
    add_servicer: Callable[[Any, grpc.aio.Server], None] = pb_grpc.add_GenerationServiceServicer_to_server,
) -> grpc.aio.Server:
    """A grpc.aio server with `servicer`, `health` and reflection over both, not yet bound to a port
    (`add_servicer`: how the servicer's methods are registered, e.g. with other request deserializers)."""
    server = grpc.aio.server(
        interceptors=list(interceptors),
        options=[("grpc.max_receive_message_length", max_receive_message_length), *SHARED_OPTIONS, *options],
    )
    add_servicer(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable([SERVICE_NAME, HEALTH_SERVICE_NAME], server)
    return server
