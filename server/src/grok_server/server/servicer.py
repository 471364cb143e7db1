"""grok.serving.v1.GenerationService over vLLM's AsyncLLM."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc
from vllm.exceptions import GracefulHTTPError, VLLMClientError
from vllm.sampling_params import SamplingParams
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError

from grok_rpc.grpc_setup import Undecodable
from grok_server.server import engine as eng
from grok_server.server.admission import Admission, auto_stream_interval
from grok_server.server.lifecycle import Lifecycle, unavailable_message
from grok_server.server.metrics import ServerMetrics
from grok_server.server.validation import (
    Limits,
    ValidatedRequest,
    ValidationError,
    check_request_size,
    resolve_max_tokens,
    validate_request,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# Tokenizing this much text takes long enough (milliseconds) to be worth a thread hop off the event loop.
_INLINE_TOKENIZE_CHARS = 4096
_SHUT_DOWN_MESSAGE = ("the server shut down before the request finished (drain grace period over); "
                      "retry on another replica")


@dataclass
class _Job:
    """One admitted request on its way through the engine."""

    engine_id: str
    request_id: str
    prompt_ids: list[int]
    request: ValidatedRequest
    params: SamplingParams
    top_n: int
    started: float


class RpcFailure(Exception):
    """Ends the current RPC with `code` and `message` (and optional trailing metadata)."""

    def __init__(self, code: grpc.StatusCode, message: str,
                 trailing: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.trailing = trailing


class GenerationServicer(pb_grpc.GenerationServiceServicer):
    def __init__(self, lifecycle: Lifecycle, admission: Admission, metrics: ServerMetrics,
                 on_engine_dead: Callable[[], None], stream_interval: int = 0) -> None:
        self._lifecycle = lifecycle
        self._admission = admission
        self._metrics = metrics
        self._on_engine_dead = on_engine_dead
        self._stream_interval = stream_interval  # 0: auto
        self._engine: AsyncLLM | None = None
        self._limits: Limits | None = None
        self._info: pb.ModelInfo | None = None
        self._seq = itertools.count()
        self._active: set[str] = set()  # engine request ids in flight
        self._shutting_down = False
        self.idle = asyncio.Event()
        self.idle.set()

    def attach(self, engine: AsyncLLM, limits: Limits, info: pb.ModelInfo) -> None:
        """Called once the engine has loaded; before that every RPC answers UNAVAILABLE."""
        self._engine = engine
        self._limits = limits
        self._info = info
        self._metrics.engine_requests = engine.get_num_unfinished_requests

    async def abort_all(self) -> None:
        """Drain's last resort: abort what still runs; those calls end with UNAVAILABLE."""
        self._shutting_down = True
        if self._engine is not None and self._active:
            await self._engine.abort(list(self._active))

    # ---- RPCs -------------------------------------------------------------------------------------------

    async def Generate(self, request: pb.GenerateRequest,
                       context: grpc.aio.ServicerContext) -> pb.GenerateResponse:
        async def body() -> pb.GenerateResponse:
            final = pb.GenerateResponse()
            texts: list[str] = []
            async with contextlib.aclosing(self._generate(request)) as stream:
                async for part in stream:
                    texts.append(part.text)
                    final.token_ids.extend(part.token_ids)
                    final.logprobs.extend(part.logprobs)
                    if part.prompt_token_ids or part.prompt_logprobs:
                        final.prompt_text = part.prompt_text
                        final.prompt_token_ids.extend(part.prompt_token_ids)
                        final.prompt_logprobs.extend(part.prompt_logprobs)
                    final.request_id = part.request_id
                    final.usage.CopyFrom(part.usage)
                    if part.finish_reason:
                        final.finish_reason = part.finish_reason
                        which = part.WhichOneof("stop_reason")
                        if which == "stop_string":
                            final.stop_string = part.stop_string
                        elif which == "stop_token_id":
                            final.stop_token_id = part.stop_token_id
            final.text = "".join(texts)
            return final

        return await self._call("Generate", context, body)

    async def GenerateStream(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> None:
        # A coroutine writing with context.write (not an async generator) so that a cancel or deadline always
        # lands inside our code and closes the engine stream, which aborts the engine request.
        async def body() -> None:
            async with contextlib.aclosing(self._generate(request)) as stream:
                async for part in stream:
                    await context.write(part)

        await self._call("GenerateStream", context, body)

    async def Tokenize(self, request: pb.TokenizeRequest,
                       context: grpc.aio.ServicerContext) -> pb.TokenizeResponse:
        async def body() -> pb.TokenizeResponse:
            self._parsed(request)
            engine, limits = self._ready()
            check_request_size(request.ByteSize(), limits)
            add_special = request.add_special_tokens if request.HasField("add_special_tokens") else True
            ids = await self._encode(engine, request.text, add_special)
            resp = pb.TokenizeResponse(token_ids=ids)
            if request.return_tokens:
                resp.tokens.extend(engine.get_tokenizer().convert_ids_to_tokens(ids))
            return resp

        return await self._call("Tokenize", context, body)

    async def GetModelInfo(self, request: pb.GetModelInfoRequest,
                           context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        async def body() -> pb.ModelInfo:
            self._parsed(request)
            self._ready()
            assert self._info is not None
            return self._info

        return await self._call("GetModelInfo", context, body)

    # ---- plumbing ---------------------------------------------------------------------------------------

    async def _call(self, method: str, context: grpc.aio.ServicerContext,
                    body: Callable[[], Awaitable[T]]) -> T:
        """Runs `body`, turns failures into status codes, and counts the outcome."""
        code = grpc.StatusCode.OK
        try:
            return await body()
        except RpcFailure as f:
            code = f.code
            if f.trailing:
                context.set_trailing_metadata(f.trailing)
            await context.abort(f.code, f.message)
            raise  # unreachable: abort raises
        except ValidationError as e:
            code = grpc.StatusCode.INVALID_ARGUMENT
            await context.abort(code, str(e))
            raise
        except asyncio.CancelledError:
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= 0.05
            code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            code = grpc.StatusCode.INTERNAL
            log.exception("%s failed", method)
            await context.abort(code, f"internal error: {type(e).__name__}: {e}")
            raise
        finally:
            self._metrics.requests.labels(method, code.name).inc()

    @staticmethod
    def _parsed(request: object) -> None:
        """A request that did not parse (grpc_setup.lenient) is refused first, with or without an engine."""
        if isinstance(request, Undecodable):
            raise ValidationError(request.details)

    def _ready(self) -> tuple[AsyncLLM, Limits]:
        reason = unavailable_message(self._lifecycle.phase)
        if reason is not None or self._engine is None or self._limits is None:
            raise RpcFailure(grpc.StatusCode.UNAVAILABLE, reason or "the model is still loading; retry later")
        return self._engine, self._limits

    async def _encode(self, engine: AsyncLLM, text: str, add_special_tokens: bool = True) -> list[int]:
        tokenizer = engine.get_tokenizer()
        if len(text) <= _INLINE_TOKENIZE_CHARS:
            return list(tokenizer.encode(text, add_special_tokens=add_special_tokens))
        return list(await asyncio.to_thread(tokenizer.encode, text, add_special_tokens=add_special_tokens))

    def _admit(self) -> None:
        if not self._admission.try_acquire():
            retry_ms = self._admission.retry_after_ms()
            raise RpcFailure(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server is at its limit of {self._admission.limit} concurrent requests; "
                f"retry after {retry_ms} ms or on another replica",
                (("retry-after-ms", str(retry_ms)), ("grpc-retry-pushback-ms", str(retry_ms))),
            )
        self.idle.clear()

    def _release(self, started: float) -> None:
        self._admission.release(time.perf_counter() - started)
        if self._admission.in_flight == 0:
            self.idle.set()

    async def _generate(self, request: pb.GenerateRequest) -> AsyncIterator[pb.GenerateResponse]:
        """Validates, admits and runs one request, yielding deltas. Raises RpcFailure / ValidationError."""
        self._parsed(request)
        engine, limits = self._ready()
        check_request_size(request.ByteSize(), limits)
        v = validate_request(request, limits)
        self._admit()
        started = time.perf_counter()
        request_id = request.request_id or uuid.uuid4().hex
        engine_id = f"{request_id}-{next(self._seq)}"  # unique even when callers reuse ids
        try:
            prompt_ids = v.prompt.token_ids
            if prompt_ids is None:
                assert v.prompt.text is not None
                prompt_ids = await self._encode(engine, v.prompt.text)
                if not prompt_ids:
                    raise ValidationError("prompt is empty after tokenization")
            max_tokens = resolve_max_tokens(len(prompt_ids), v.max_new_tokens, limits,
                                            v.sampling.get("min_tokens", 0))
            interval = self._stream_interval or auto_stream_interval(self._admission.recent_peak())
            params = eng.sampling_params(v, max_tokens, interval)
            job = _Job(engine_id, request_id, prompt_ids, v, params, v.sampling.get("logprobs") or 0, started)
            if self._shutting_down:  # abort_all ran while this one was tokenizing: it would escape the abort
                raise RpcFailure(grpc.StatusCode.UNAVAILABLE, _SHUT_DOWN_MESSAGE)
            self._active.add(engine_id)
            async for part in self._run_engine(engine, job):
                yield part
        finally:
            self._active.discard(engine_id)
            self._release(started)
            # Admitted calls only: refusals are counted by outcome, and would pull the quantiles to zero.
            self._metrics.duration.observe(time.perf_counter() - started)

    async def _run_engine(self, engine: AsyncLLM, job: _Job) -> AsyncIterator[pb.GenerateResponse]:
        m = self._metrics
        v, prompt_ids, request_id, top_n = job.request, job.prompt_ids, job.request_id, job.top_n
        started = job.started
        generated = 0
        last_token_at = 0.0
        first = True
        try:
            async for out in engine.generate(eng.engine_input(prompt_ids, v.prompt.text), job.params,
                                             job.engine_id):
                now = time.perf_counter()
                c = out.outputs[0]
                if c.finish_reason == "error":  # the engine core failed on this request (not ABORTED/OK)
                    raise RpcFailure(grpc.StatusCode.INTERNAL,
                                     "the engine failed on this request; it may succeed if retried")
                new = len(c.token_ids)
                if new:
                    if generated == 0:
                        m.ttft.observe(now - started)
                        m.prompt_tokens.inc(len(prompt_ids))
                        if new > 1:
                            # vLLM merges the steps a busy frontend has not read yet into one output: the
                            # tokens after the first reached it together, 0 s apart (one gap per token after
                            # the first, whatever the merging).
                            m.itl.observe(0.0, new - 1)
                    else:
                        m.itl.observe((now - last_token_at) / new, new)
                    m.generation_tokens.inc(new)
                    generated += new
                    last_token_at = now
                msg = pb.GenerateResponse(
                    request_id=request_id,
                    text="" if v.token_ids_only else c.text,
                    token_ids=c.token_ids,
                    usage=pb.Usage(prompt_tokens=len(prompt_ids), generated_tokens=generated,
                                   cached_prompt_tokens=out.num_cached_tokens or 0),
                    **eng.finish_fields(c),
                )
                if v.want_logprobs:
                    msg.logprobs.extend(eng.token_logprobs(c.token_ids, c.logprobs, top_n,
                                                           with_text=not v.token_ids_only))
                if first:
                    first = False
                    if v.echo or v.want_prompt_logprobs:
                        msg.prompt_token_ids.extend(prompt_ids)
                        msg.prompt_text = (v.prompt.text if v.prompt.text is not None
                                           else engine.get_tokenizer().decode(prompt_ids))
                    if v.want_prompt_logprobs:
                        msg.prompt_logprobs.extend(eng.token_logprobs(prompt_ids, out.prompt_logprobs, top_n))
                if c.finish_reason == "abort" and self._shutting_down:
                    raise RpcFailure(grpc.StatusCode.UNAVAILABLE, _SHUT_DOWN_MESSAGE)
                yield msg
        except EngineDeadError:
            self._on_engine_dead()
            raise RpcFailure(grpc.StatusCode.UNAVAILABLE,
                             "the engine died while serving the request; retry on another replica") from None
        except GracefulHTTPError as e:  # vLLM's own queue limits, if configured through --engine-arg
            raise RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)) from None
        except VLLMClientError as e:
            raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, f"rejected by the engine: {e}") from None
