"""The router's HTTP port: OpenAI-compatible completions, model list, metrics and probes (aiohttp)."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from grok_router import openai_api as oai
from grok_router.forward import Forwarder, RouteError, request_key

API = "openai"
NO_CHAT = (
    "this deployment has no chat template: Grok-1 is a base model, so /v1/chat/completions is off; "
    "send a prompt to /v1/completions, or configure a chat template (the router's --chat-template)"
)


def _error(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def _route_error(err: RouteError) -> web.Response:
    status, body = oai.grpc_error(err.code, err.details)
    headers = {}
    for key, value in err.trailers:
        if key == "retry-after-ms":
            with contextlib.suppress(ValueError):
                headers["Retry-After"] = str(max(1, round(int(value) / 1000)))
    return _error(status, body, headers)


class RouterHTTP:
    def __init__(
        self,
        forwarder: Forwarder,
        model: str,
        prefix_blocks: int,
        ready: Callable[[], bool],
        exposition: Callable[[], bytes],
    ) -> None:
        self.forwarder = forwarder
        self.metrics = forwarder.metrics
        self.model = model
        self.prefix_blocks = prefix_blocks
        self.ready = ready
        self.exposition = exposition
        self.created = int(time.time())

    def app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.add_routes(
            [
                web.post("/v1/completions", self.completions),
                web.post("/v1/chat/completions", self.chat),
                web.get("/v1/models", self.models),
                web.get("/metrics", self.metrics_page),
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
            ]
        )
        return app

    async def healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, _: web.Request) -> web.Response:
        ready = self.ready()
        return web.Response(status=200 if ready else 503, text="ready\n" if ready else "not ready\n")

    async def metrics_page(self, _: web.Request) -> web.Response:
        return web.Response(body=self.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def models(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": self.model, "object": "model", "created": self.created, "owned_by": "grok-serve"}
                ],
            }
        )

    async def chat(self, _: web.Request) -> web.Response:
        return _error(400, oai.error_body(NO_CHAT, "invalid_request_error", code="chat_template_missing"))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        code = "CANCELLED"
        try:
            try:
                body = await request.json()
            except json.JSONDecodeError as err:
                raise oai.BadRequest(f"the request body is not JSON: {err}") from None
            completion = oai.completion_request(body, self.model)
            completion.request.request_id = f"cmpl-{uuid.uuid4().hex}"
            metadata = tuple(
                (k.lower(), v) for k, v in request.headers.items() if k.lower() == "authorization"
            )
            if completion.stream:
                answer = await self._stream(request, completion, metadata)
            else:
                message = await self.forwarder.unary(
                    "Generate",
                    completion.request,
                    request_key(completion.request, self.prefix_blocks),
                    None,
                    metadata,
                )
                answer = web.json_response(
                    oai.completion_response(
                        message, completion, self.model, completion.request.request_id, int(time.time())
                    )
                )
            code = "OK"
            return answer
        except oai.BadRequest as err:
            code = grpc.StatusCode.INVALID_ARGUMENT.name
            return _error(err.status, oai.error_body(str(err), "invalid_request_error", err.param, err.code))
        except RouteError as err:
            code = err.code.name
            return _route_error(err)
        finally:
            self.metrics.requests.labels(API, "Completions", code).inc()
            self.metrics.duration.observe(time.monotonic() - arrived)

    async def _stream(
        self, request: web.Request, completion: oai.Completion, metadata: tuple[tuple[str, str], ...]
    ) -> web.StreamResponse:
        """Server-sent events: a chunk per replica message, the usage chunk when asked, then [DONE]. The HTTP
        status waits for the first message, so a call refused before any output gets its proper status."""
        ident, created = completion.request.request_id, int(time.time())
        stream = self.forwarder.stream(
            completion.request, request_key(completion.request, self.prefix_blocks), None, metadata
        )
        async with contextlib.aclosing(stream):
            first = await anext(stream, None)  # RouteError here: nothing sent yet, the caller maps it
            answer = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await answer.prepare(request)
            last = None
            offset = 0
            try:
                message = first
                while message is not None:
                    part = oai.choice(message, completion, offset)
                    offset += len(part["text"])
                    await answer.write(oai.sse(oai.chunk([part], self.model, ident, created)))
                    last = message
                    message = await anext(stream, None)
            except RouteError as err:  # after output began: said in the stream, as vLLM's server does
                _, body = oai.grpc_error(err.code, err.details)
                await answer.write(oai.sse(body))
            else:
                if completion.include_usage and last is not None:
                    await answer.write(oai.sse(oai.chunk([], self.model, ident, created, oai.usage(last))))
            await answer.write(oai.sse("[DONE]"))
            await answer.write_eof()
            return answer
