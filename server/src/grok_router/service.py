"""The router's grok.serving.v1.GenerationService: the server's API, each call forwarded to one replica."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc

from grok_router.forward import Forwarder, RouteError, request_key
from grok_router.gate import Gate
from grok_server.grpc_setup import SERVICE_NAME

API = "grpc"


class Undecodable:
    """A request message that did not parse (e.g. a string field that is not UTF-8): answered with
    INVALID_ARGUMENT by the method, where grpc's own deserialization failure would be UNKNOWN."""

    def __init__(self, kind: str, why: str) -> None:
        self.error = RouteError(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid {kind}: {why}")


def _lenient(message: Any) -> Any:
    def parse(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except DecodeError as err:
            return Undecodable(message.DESCRIPTOR.full_name, str(err))

    return parse


def add_to_server(servicer: RouterServicer, server: grpc.aio.Server) -> None:
    """Registers the router's GenerationService as the generated code does, with lenient deserializers."""
    unary, stream = grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler
    handlers = {
        "Generate": unary(servicer.Generate, _lenient(pb.GenerateRequest),
                          pb.GenerateResponse.SerializeToString),
        "GenerateStream": stream(servicer.GenerateStream, _lenient(pb.GenerateRequest),
                                 pb.GenerateResponse.SerializeToString),
        "Tokenize": unary(servicer.Tokenize, _lenient(pb.TokenizeRequest),
                          pb.TokenizeResponse.SerializeToString),
        "GetModelInfo": unary(servicer.GetModelInfo, _lenient(pb.GetModelInfoRequest),
                              pb.ModelInfo.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def _authorization(context: grpc.aio.ServicerContext) -> str | bytes | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value
    return None


class RouterServicer(pb_grpc.GenerationServiceServicer):
    def __init__(self, forwarder: Forwarder, prefix_blocks: int, gate: Gate) -> None:
        self.forwarder = forwarder
        self.prefix_blocks = prefix_blocks
        self.metrics = forwarder.metrics
        self.gate = gate

    @staticmethod
    def _deadline(context: grpc.aio.ServicerContext) -> float | None:
        left = context.time_remaining()
        return None if left is None else time.monotonic() + left

    def _count(self, method: str, code: str, arrived: float) -> None:
        self.metrics.requests.labels(API, method, code).inc()
        self.metrics.duration.observe(time.monotonic() - arrived)

    async def _unary(
        self, method: str, request: Any, context: grpc.aio.ServicerContext, key: bytes | None = None
    ) -> Any:
        arrived = time.monotonic()
        code = "CANCELLED"
        ticket = None
        try:
            ticket = self.gate.admit(_authorization(context), generates=method == "Generate")
            if isinstance(request, Undecodable):
                raise request.error
            metadata = self.gate.upstream(context.invocation_metadata())
            answer = await self.forwarder.unary(method, request, key, self._deadline(context), metadata,
                                                ticket.tenant)
            if method == "Generate":
                ticket.observe(answer)
            code = "OK"
            return answer
        except RouteError as err:
            code = err.code.name
            await context.abort(err.code, err.details, err.trailers)
        finally:
            if ticket is not None:
                ticket.close(code)
            self._count(method, code, arrived)

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        key = None if isinstance(request, Undecodable) else request_key(request, self.prefix_blocks)
        return await self._unary("Generate", request, context, key)

    async def GenerateStream(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> None:
        arrived = time.monotonic()
        code = "CANCELLED"
        ticket = None
        try:
            ticket = self.gate.admit(_authorization(context), generates=True)
            if isinstance(request, Undecodable):
                raise request.error
            stream = self.forwarder.stream(
                request,
                request_key(request, self.prefix_blocks),
                self._deadline(context),
                self.gate.upstream(context.invocation_metadata()),
                ticket.tenant,
            )
            async with contextlib.aclosing(stream):
                async for message in stream:
                    ticket.observe(message)
                    await context.write(message)
            code = "OK"
        except RouteError as err:
            code = err.code.name
            await context.abort(err.code, err.details, err.trailers)
        except asyncio.CancelledError:
            raise
        finally:
            if ticket is not None:
                ticket.close(code)
            self._count("GenerateStream", code, arrived)

    async def Tokenize(
        self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.TokenizeResponse:
        return await self._unary("Tokenize", request, context)

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        return await self._unary("GetModelInfo", request, context)
