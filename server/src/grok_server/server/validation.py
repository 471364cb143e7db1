"""Request validation: pure functions from a GenerateRequest to engine-ready values.

Every rejection is a `ValidationError` whose message names the field, the value and the allowed range, so a
caller can fix the request without reading server logs. Nothing here imports vLLM.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from grok.serving.v1 import generation_pb2 as pb

MAX_REQUEST_ID_LENGTH = 128
_REQUEST_ID_RE = re.compile(r"^[\x21-\x7e]*$")  # printable ASCII, no spaces: it ends up in logs


class ValidationError(ValueError):
    """The request is invalid; the message is meant for the caller (INVALID_ARGUMENT)."""


@dataclass(frozen=True)
class Limits:
    """What the served model and the server's flags allow."""

    max_model_len: int
    vocab_size: int
    default_max_tokens: int = 16
    max_stop_strings: int = 16
    max_stop_string_length: int = 256
    max_logprobs: int = 20
    max_request_bytes: int = 4 * 1024 * 1024


@dataclass
class Prompt:
    """The prompt as given: text to tokenize, or token ids already checked against the vocabulary."""

    text: str | None = None
    token_ids: list[int] | None = None


@dataclass
class ValidatedRequest:
    """A request whose fields are all in range; `max_tokens` is resolved once the prompt length is known."""

    prompt: Prompt
    sampling: dict[str, Any] = field(default_factory=dict)
    max_new_tokens: int | None = None
    echo: bool = False
    want_logprobs: bool = False
    want_prompt_logprobs: bool = False
    token_ids_only: bool = False


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise ValidationError(f"{name} must be a finite number, got {value}")
    return value


def _in_range(name: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    _finite(name, value)
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        bracket = "(" if low_open else "["
        raise ValidationError(f"{name} must be in {bracket}{low:g}, {high:g}], got {value:g}")


def check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID_LENGTH:
        raise ValidationError(
            f"request_id is {len(request_id)} characters long; the limit is {MAX_REQUEST_ID_LENGTH}"
        )
    if not _REQUEST_ID_RE.match(request_id):
        raise ValidationError("request_id must contain only printable ASCII characters without spaces")


def check_token_ids(name: str, ids: list[int], vocab_size: int) -> None:
    """Every id must index the model's vocabulary; the message names the first bad one and its position."""
    for position, token_id in enumerate(ids):
        if not 0 <= token_id < vocab_size:
            raise ValidationError(
                f"{name}[{position}] = {token_id} is outside the vocabulary [0, {vocab_size})"
            )


def check_request_size(size_bytes: int, limits: Limits) -> None:
    if size_bytes > limits.max_request_bytes:
        raise ValidationError(
            f"request is {size_bytes} bytes; the limit is {limits.max_request_bytes} bytes"
        )


def _sampling(params: pb.SamplingParams, limits: Limits) -> dict[str, Any]:
    """Maps the set fields to vLLM SamplingParams keywords (unset fields keep vLLM's defaults)."""
    out: dict[str, Any] = {}
    if params.HasField("temperature"):
        _in_range("sampling.temperature", params.temperature, 0.0, 2.0)
        out["temperature"] = params.temperature
    if params.HasField("top_p"):
        _in_range("sampling.top_p", params.top_p, 0.0, 1.0, low_open=True)
        out["top_p"] = params.top_p
    if params.HasField("top_k"):
        if not 0 <= params.top_k <= limits.vocab_size:
            raise ValidationError(
                f"sampling.top_k must be in [0, {limits.vocab_size}] (0 disables it), got {params.top_k}"
            )
        out["top_k"] = params.top_k
    if params.HasField("min_p"):
        _in_range("sampling.min_p", params.min_p, 0.0, 1.0)
        out["min_p"] = params.min_p
    if params.HasField("presence_penalty"):
        _in_range("sampling.presence_penalty", params.presence_penalty, -2.0, 2.0)
        out["presence_penalty"] = params.presence_penalty
    if params.HasField("frequency_penalty"):
        _in_range("sampling.frequency_penalty", params.frequency_penalty, -2.0, 2.0)
        out["frequency_penalty"] = params.frequency_penalty
    if params.HasField("repetition_penalty"):
        _in_range("sampling.repetition_penalty", params.repetition_penalty, 0.0, 2.0, low_open=True)
        out["repetition_penalty"] = params.repetition_penalty
    if params.HasField("seed"):
        if params.seed < 0:
            raise ValidationError(f"sampling.seed must be >= 0, got {params.seed}")
        out["seed"] = params.seed
    return out


def _stopping(stop: pb.StoppingCriteria, limits: Limits) -> tuple[dict[str, Any], int | None]:
    out: dict[str, Any] = {}
    max_new: int | None = None
    if stop.HasField("max_new_tokens"):
        max_new = stop.max_new_tokens
        if max_new < 1:
            raise ValidationError(f"stopping.max_new_tokens must be >= 1, got {max_new}")
        if max_new >= limits.max_model_len:
            raise ValidationError(
                f"stopping.max_new_tokens = {max_new} does not fit in the context of "
                f"{limits.max_model_len} tokens with a prompt of at least 1 token"
            )
    if stop.HasField("min_new_tokens"):
        if stop.min_new_tokens < 0:
            raise ValidationError(f"stopping.min_new_tokens must be >= 0, got {stop.min_new_tokens}")
        if max_new is not None and stop.min_new_tokens > max_new:
            raise ValidationError(
                f"stopping.min_new_tokens = {stop.min_new_tokens} is larger than "
                f"stopping.max_new_tokens = {max_new}"
            )
        out["min_tokens"] = stop.min_new_tokens
    if len(stop.stop) > limits.max_stop_strings:
        raise ValidationError(
            f"stopping.stop has {len(stop.stop)} strings; the limit is {limits.max_stop_strings}"
        )
    for i, s in enumerate(stop.stop):
        if not s:
            raise ValidationError(f"stopping.stop[{i}] is empty")
        if len(s) > limits.max_stop_string_length:
            raise ValidationError(
                f"stopping.stop[{i}] is {len(s)} characters long; "
                f"the limit is {limits.max_stop_string_length}"
            )
    if stop.stop:
        out["stop"] = list(stop.stop)
        out["include_stop_str_in_output"] = stop.include_stop_str_in_output
    if stop.stop_token_ids:
        ids = list(stop.stop_token_ids)
        check_token_ids("stopping.stop_token_ids", ids, limits.vocab_size)
        out["stop_token_ids"] = ids
    if stop.ignore_eos:
        out["ignore_eos"] = True
    return out, max_new


def validate_request(req: pb.GenerateRequest, limits: Limits) -> ValidatedRequest:
    """Checks everything that does not need the tokenizer. Raises ValidationError."""
    check_request_id(req.request_id)
    kind = req.WhichOneof("prompt")
    if kind == "text":
        if not req.text:
            raise ValidationError("prompt is empty: set text or token_ids")
        prompt = Prompt(text=req.text)
    elif kind == "token_ids":
        ids = list(req.token_ids.ids)
        if not ids:
            raise ValidationError("prompt is empty: token_ids.ids has no tokens")
        if len(ids) >= limits.max_model_len:
            raise ValidationError(prompt_too_long_message(len(ids), limits.max_model_len))
        check_token_ids("token_ids.ids", ids, limits.vocab_size)
        prompt = Prompt(token_ids=ids)
    else:
        raise ValidationError("prompt is empty: set text or token_ids")

    sampling = _sampling(req.sampling, limits)
    stopping, max_new = _stopping(req.stopping, limits)
    sampling.update(stopping)

    lp = req.logprobs
    if not 0 <= lp.top_n <= limits.max_logprobs:
        raise ValidationError(f"logprobs.top_n must be in [0, {limits.max_logprobs}], got {lp.top_n}")
    if lp.top_n and not lp.generated:
        raise ValidationError("logprobs.top_n needs logprobs.generated")
    if lp.generated:
        sampling["logprobs"] = lp.top_n
    if lp.prompt:
        sampling["prompt_logprobs"] = lp.top_n
    if req.token_ids_only and "stop" not in sampling:
        sampling["detokenize"] = False  # vLLM needs the text to match stop strings
    return ValidatedRequest(
        prompt=prompt,
        sampling=sampling,
        max_new_tokens=max_new,
        echo=req.echo,
        want_logprobs=lp.generated,
        want_prompt_logprobs=lp.prompt,
        token_ids_only=req.token_ids_only,
    )


def prompt_too_long_message(prompt_len: int, max_model_len: int) -> str:
    return (
        f"prompt has {prompt_len} tokens; the context is {max_model_len} tokens, "
        f"so at most {max_model_len - 1} prompt tokens leave room for one generated token"
    )


def resolve_max_tokens(prompt_len: int, requested: int | None, limits: Limits, min_tokens: int = 0) -> int:
    """The number of tokens to generate at most, once the prompt is tokenized. Raises ValidationError."""
    if prompt_len >= limits.max_model_len:
        raise ValidationError(prompt_too_long_message(prompt_len, limits.max_model_len))
    room = limits.max_model_len - prompt_len
    if requested is None:
        # Unset: the server default (raised to min_new_tokens), cut to what fits rather than failing a
        # request that never asked for a length.
        resolved = min(max(limits.default_max_tokens, min_tokens), room)
        if min_tokens > resolved:
            raise ValidationError(
                f"stopping.min_new_tokens = {min_tokens} does not fit in the context: the prompt has "
                f"{prompt_len} tokens, leaving {room} of {limits.max_model_len}"
            )
        return resolved
    if requested > room:
        raise ValidationError(
            f"prompt ({prompt_len} tokens) plus stopping.max_new_tokens ({requested}) is "
            f"{prompt_len + requested} tokens, more than the context of {limits.max_model_len}"
        )
    return requested
