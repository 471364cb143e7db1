"""The router's HTTP port: OpenAI-compatible completions, model list, metrics and probes (aiohttp)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from grok_router import openai_api as oai
from grok_router.forward import Forwarder, RouteError, request_key
from grok_router.gate import Gate, Refused, Ticket

log = logging.getLogger("grok_router.http")

API = "openai"
NO_CHAT = (
    "this deployment has no chat template: Grok-1 is a base model, so /v1/chat/completions is off; "
    "send a prompt to /v1/completions, or configure a chat template (the router's --chat-template)"
)


def _error(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def _refused(err: Refused) -> web.Response:
    if err.code == grpc.StatusCode.UNAUTHENTICATED:
        return _error(401, oai.error_body(err.details, "invalid_request_error", code="invalid_api_key"),
                      {"WWW-Authenticate": "Bearer"})
    return _error(429, oai.error_body(err.details, "rate_limit_error", code="rate_limit_exceeded"),
                  {"Retry-After": str(max(1, math.ceil(err.retry_after)))})


def _route_error(err: RouteError) -> web.Response:
    if isinstance(err, Refused):
        return _refused(err)
    status, body = oai.grpc_error(err.code, err.details)
    headers = {}
    for key, value in err.trailers:
        if key == "retry-after-ms":
            with contextlib.suppress(ValueError):
                headers["Retry-After"] = str(max(1, round(int(value) / 1000)))
    return _error(status, body, headers)


async def json_body(request: web.Request) -> Any:
    """The request body as JSON, or BadRequest saying what is wrong with it (never an exception of the
    transport, the charset or the JSON parser, which aiohttp would turn into a bare 500)."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.client_max_size
        raise oai.BadRequest(f"the request body is over {limit} bytes", status=413) from None
    except (web.RequestPayloadError, HttpProcessingError) as err:
        reason = getattr(err, "message", None) or str(err).strip()
        raise oai.BadRequest(f"the request body could not be read: {reason}") from None
    charset = request.charset or "utf-8"
    try:
        text = raw.decode(charset)
    except LookupError:
        raise oai.BadRequest(f"unknown charset {charset!r} in Content-Type: send UTF-8 JSON") from None
    except UnicodeDecodeError as err:
        raise oai.BadRequest(
            f"the request body is not valid {charset}: byte {err.start} cannot be decoded; send UTF-8 JSON"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise oai.BadRequest(f"the request body is not JSON: {err}") from None
    except RecursionError:
        raise oai.BadRequest("the request body is not JSON this API takes: nested too deeply") from None
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        raise oai.BadRequest(f"the request body is not JSON this API takes: {err}") from None


def _authorization(request: web.Request) -> str | None:
    return request.headers.get("Authorization")


@web.middleware
async def openai_errors(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    """aiohttp's own refusals on the OpenAI paths (unknown path, wrong method, ...) in OpenAI's error shape,
    and anything unexpected as a 500 in that shape, logged, rather than aiohttp's plain-text page."""
    try:
        return await handler(request)
    except web.HTTPException as err:
        if err.status < 400 or not request.path.startswith("/v1/"):
            raise
        kind = "not_found_error" if err.status == 404 else "invalid_request_error"
        headers = {k: v for k, v in err.headers.items() if k.lower() == "allow"}
        return _error(err.status, oai.error_body(f"{request.method} {request.path}: {err.reason}", kind),
                      headers)
    except Exception:
        if not request.path.startswith("/v1/"):
            raise
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, oai.error_body("the router failed to handle the request", "internal_error"))


class RouterHTTP:
    def __init__(
        self,
        forwarder: Forwarder,
        model: str,
        prefix_blocks: int,
        ready: Callable[[], bool],
        exposition: Callable[[], bytes],
        gate: Gate,
    ) -> None:
        self.forwarder = forwarder
        self.gate = gate
        self.metrics = forwarder.metrics
        self.model = model
        self.prefix_blocks = prefix_blocks
        self.ready = ready
        self.exposition = exposition
        self.created = int(time.time())

    def app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024, middlewares=[openai_errors])
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

    async def models(self, request: web.Request) -> web.Response:
        try:
            self.gate.admit(_authorization(request), generates=False).close("OK")
        except Refused as err:
            return _refused(err)
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": self.model, "object": "model", "created": self.created, "owned_by": "grok-serve"}
                ],
            }
        )

    async def chat(self, request: web.Request) -> web.Response:
        try:  # callers without a key learn that first, as on every other model path
            self.gate.admit(_authorization(request), generates=False).close("INVALID_ARGUMENT")
        except Refused as err:
            return _refused(err)
        return _error(400, oai.error_body(NO_CHAT, "invalid_request_error", code="chat_template_missing"))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        code = "CANCELLED"
        ticket: Ticket | None = None
        try:
            authorization = _authorization(request)
            ticket = self.gate.admit(authorization, generates=True)
            body = await json_body(request)
            completion = oai.completion_request(body, self.model)
            completion.request.request_id = f"cmpl-{uuid.uuid4().hex}"
            caller = ()
            if authorization is not None:
                if not authorization.isascii() or not authorization.isprintable():
                    raise oai.BadRequest("the Authorization header must be printable ASCII")
                caller = (("authorization", authorization),)
            metadata = self.gate.upstream(caller)
            if completion.stream:
                answer = await self._stream(request, completion, metadata, ticket)
            else:
                message = await self.forwarder.unary(
                    "Generate",
                    completion.request,
                    request_key(completion.request, self.prefix_blocks),
                    None,
                    metadata,
                    ticket.tenant,
                )
                ticket.observe(message)
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
            if ticket is not None:
                ticket.close(code)
            self.metrics.requests.labels(API, "Completions", code).inc()
            self.metrics.duration.observe(time.monotonic() - arrived)

    async def _stream(
        self,
        request: web.Request,
        completion: oai.Completion,
        metadata: tuple[tuple[str, str], ...],
        ticket: Ticket,
    ) -> web.StreamResponse:
        """Server-sent events: a chunk per replica message, the usage chunk when asked, then [DONE]. The HTTP
        status waits for the first message, so a call refused before any output gets its proper status."""
        ident, created = completion.request.request_id, int(time.time())
        stream = self.forwarder.stream(
            completion.request, request_key(completion.request, self.prefix_blocks), None, metadata,
            ticket.tenant,
        )
        async with contextlib.aclosing(stream):
            first = await anext(stream, None)  # RouteError here: nothing sent yet, the caller maps it
            answer = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await answer.prepare(request)
            last = None
            events = oai.ChunkWriter(completion, self.model, ident, created)
            try:
                message = first
                while message is not None:
                    ticket.observe(message)
                    await answer.write(events.event(message))
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
