"""gRPC server reflection in both versions: `grpc.reflection.v1` (asked first by newer tools, e.g. grpcurl,
Postman) and `grpc.reflection.v1alpha` (what grpcio-reflection registers).

The v1 service is a copy of v1alpha under another package name: same messages, same field numbers, so the
same servicer answers both, its messages (de)serialized with the v1alpha classes under the v1 method path.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
SERVICE_NAMES = (V1_SERVICE_NAME, reflection.SERVICE_NAME)


def enable(service_names: Sequence[str], server: grpc.aio.Server) -> None:
    """Serves reflection for `service_names` (and for reflection itself) in v1 and v1alpha."""
    names = [*service_names, *SERVICE_NAMES]
    reflection.enable_server_reflection(names, server)
    servicer = reflection.aio.ReflectionServicer(names)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=v1alpha.ServerReflectionRequest.FromString,
            response_serializer=v1alpha.ServerReflectionResponse.SerializeToString),
    })])
