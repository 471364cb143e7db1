"""OpenAI's completions API in grok.serving.v1 terms (pure): request JSON to GenerateRequest, responses and
stream chunks back to JSON, gRPC failures to OpenAI's error shape and HTTP status.

Parameters follow OpenAI's `POST /v1/completions`, plus the extensions vLLM's OpenAI server accepts and its
benchmark client sends (`ignore_eos`, `min_tokens`, `top_k`, `min_p`, `repetition_penalty`,
`stop_token_ids`). A parameter of the wrong type or one this server cannot honour is a 400 naming it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from grok.serving.v1 import generation_pb2 as pb

FINISH_REASONS = {
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_EOS: "stop",
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_ABORTED: "abort",
}
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "not_implemented_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout_error"),
}
# Accepted and ignored: they change nothing a single completion returns.
_IGNORED = frozenset({"user", "metadata", "store"})
_FLOATS = ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty")


class BadRequest(ValueError):
    """A request this API refuses: a 400 (or `status`) naming the parameter at fault."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Completion:
    """What the HTTP layer needs besides the GenerateRequest itself."""

    request: pb.GenerateRequest
    stream: bool
    include_usage: bool
    echo: bool
    logprobs: bool


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def grpc_error(code: grpc.StatusCode, details: str) -> tuple[int, dict[str, Any]]:
    status, kind = HTTP_STATUS.get(code, (500, "internal_error"))
    return status, error_body(details or code.name, kind, code=code.name.lower())


def _number(body: Mapping[str, Any], name: str, integer: bool) -> float | int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{name} must be a number, not {json.dumps(value)}", name)
    if integer and not (isinstance(value, int) or float(value).is_integer()):
        raise BadRequest(f"{name} must be an integer, not {value}", name)
    if not math.isfinite(value):
        raise BadRequest(f"{name} must be finite", name)
    return int(value) if integer else float(value)


def _bool(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false, not {json.dumps(value)}", name)
    return value


def _text(value: str, name: str) -> str:
    """`value` when it can be sent as UTF-8 (JSON's \\ud800 escapes give lone surrogates, which cannot)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise BadRequest(f"{name} is not valid Unicode: a lone surrogate at {err.start}", name) from None
    return value


def _prompt(request: pb.GenerateRequest, prompt: Any) -> None:
    # OpenAI allows a batch (a list of prompts); one completion per request here, said plainly.
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        request.text = _text(prompt, "prompt")
    elif (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt)
    ):
        request.token_ids.ids.extend(prompt)
    elif isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, str | list) for p in prompt):
        raise BadRequest(
            "prompt: batches of prompts are not supported; send one prompt per request", "prompt"
        )
    else:
        raise BadRequest("prompt must be a string or a non-empty list of token ids", "prompt")


def completion_request(body: Any, model: str) -> Completion:
    """The GenerateRequest for a `POST /v1/completions` body, or BadRequest."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if "prompt" not in body:
        raise BadRequest("prompt is required", "prompt")
    if body.get("model") not in (None, model):
        raise BadRequest(
            f"the model {body['model']!r} does not exist here; this endpoint serves {model!r}",
            "model",
            status=404,
            code="model_not_found",
        )
    for name in ("n", "best_of"):
        if body.get(name) not in (None, 1):
            raise BadRequest(f"{name} must be 1: one completion per request", name)
    if body.get("suffix") not in (None, ""):
        raise BadRequest("suffix is not supported", "suffix")
    if body.get("logit_bias"):
        raise BadRequest("logit_bias is not supported", "logit_bias")
    request = pb.GenerateRequest()
    _prompt(request, body["prompt"])
    for name in _FLOATS:
        value = _number(body, name, integer=False)
        if value is not None:
            setattr(request.sampling, name, value)
    for name, target in (("top_k", "top_k"), ("seed", "seed")):
        value = _number(body, name, integer=True)
        if value is not None:
            setattr(request.sampling, target, value)
    for name, target in (("max_tokens", "max_new_tokens"), ("min_tokens", "min_new_tokens")):
        value = _number(body, name, integer=True)
        if value is not None:
            if value < 0 or value > 2**31 - 1:
                raise BadRequest(f"{name} must be between 0 and {2**31 - 1}, not {value}", name)
            setattr(request.stopping, target, value)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise BadRequest("stop must be a string or a list of strings", "stop")
        request.stopping.stop.extend(_text(s, "stop") for s in stop)
    ids = body.get("stop_token_ids")
    if ids is not None:
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise BadRequest("stop_token_ids must be a list of integers", "stop_token_ids")
        request.stopping.stop_token_ids.extend(ids)
    request.stopping.ignore_eos = _bool(body, "ignore_eos")
    logprobs = _number(body, "logprobs", integer=True)
    if logprobs is not None:
        if logprobs < 0:
            raise BadRequest(f"logprobs must be 0 or more, not {logprobs}", "logprobs")
        request.logprobs.generated = True
        request.logprobs.top_n = logprobs
    echo = _bool(body, "echo")
    request.echo = echo
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("stream_options must be an object", "stream_options")
    known = {
        "model",
        "prompt",
        "n",
        "best_of",
        "suffix",
        "logit_bias",
        *_FLOATS,
        "top_k",
        "seed",
        "max_tokens",
        "min_tokens",
        "stop",
        "stop_token_ids",
        "ignore_eos",
        "logprobs",
        "echo",
        "stream",
        "stream_options",
        *_IGNORED,
    }
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0]!r}", unknown[0])
    return Completion(
        request, _bool(body, "stream"), bool(options.get("include_usage")), echo, logprobs is not None
    )


def _logprobs(entries: list[pb.TokenLogprob], offset: int) -> dict[str, Any]:
    tokens, values, tops, offsets = [], [], [], []
    for entry in entries:
        tokens.append(entry.text)
        values.append(entry.logprob)
        tops.append({t.text: t.logprob for t in entry.top} or None)
        offsets.append(offset)
        offset += len(entry.text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def choice(message: pb.GenerateResponse, completion: Completion, text_offset: int = 0) -> dict[str, Any]:
    """One choice of a response or stream chunk: the message's text, its logprobs when asked, and its finish
    reason (None while a stream goes on)."""
    text = (message.prompt_text + message.text) if completion.echo and message.prompt_text else message.text
    return {
        "index": 0,
        "text": text,
        "logprobs": _logprobs(list(message.logprobs), text_offset) if completion.logprobs else None,
        "finish_reason": FINISH_REASONS.get(message.finish_reason),
    }


def usage(message: pb.GenerateResponse) -> dict[str, int]:
    prompt, generated = message.usage.prompt_tokens, message.usage.generated_tokens
    return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}


def completion_response(
    message: pb.GenerateResponse, completion: Completion, model: str, ident: str, created: int
) -> dict[str, Any]:
    return {
        "id": ident,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [choice(message, completion)],
        "usage": usage(message),
    }


def chunk(
    choices: list[dict[str, Any]], model: str, ident: str, created: int, usage_: dict[str, int] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": ident,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage_ is not None:
        body["usage"] = usage_
    return body


class ChunkWriter:
    """A stream's chunks as server-sent events. Without logprobs only the text and the finish reason change
    from chunk to chunk: the rest is encoded once per stream, not per token (the bytes are what
    sse(chunk([choice(...)], ...)) gives, a test holds them equal)."""

    def __init__(self, completion: Completion, model: str, ident: str, created: int) -> None:
        self.completion, self.model, self.ident, self.created = completion, model, ident, created
        head = json.dumps({"id": ident, "object": "text_completion", "created": created, "model": model},
                          separators=(",", ":"))
        self._head = f'data: {head[:-1]},"choices":[{{"index":0,"text":'
        self.offset = 0

    def event(self, message: pb.GenerateResponse) -> bytes:
        if self.completion.logprobs or self.completion.echo:
            part = choice(message, self.completion, self.offset)
            self.offset += len(part["text"])
            return sse(chunk([part], self.model, self.ident, self.created))
        self.offset += len(message.text)
        finish = FINISH_REASONS.get(message.finish_reason)
        return (f'{self._head}{json.dumps(message.text)},"logprobs":null,'
                f'"finish_reason":{"null" if finish is None else json.dumps(finish)}}}]}}\n\n').encode()


def sse(data: Mapping[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()
