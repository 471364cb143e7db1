"""The router's grok.serving.v1.GenerationService: the server's API, each call forwarded to one replica."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import grpc
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc

from grok_router.forward import Forwarder, RouteError, request_key
from grok_router.gate import Gate
from grok_rpc.grpc_setup import Undecodable

API = "grpc"


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
                raise RouteError(grpc.StatusCode.INVALID_ARGUMENT, request.details)
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
                raise RouteError(grpc.StatusCode.INVALID_ARGUMENT, request.details)
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
