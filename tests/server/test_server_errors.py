"""Every validation error path: INVALID_ARGUMENT with a message that names the field and the limit."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc

from tests.server.serverlib import ServerProcess, wait_metric

# Shared server flags (conftest.SHARED_FLAGS): 4 stop strings of at most 32 characters, 64 KiB requests.
Build = Callable[[pb.ModelInfo], pb.GenerateRequest]


def req(text: str = "Hello", **kw: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(text=text, **kw)  # type: ignore[arg-type]


def ids(values: list[int]) -> pb.GenerateRequest:
    return pb.GenerateRequest(token_ids=pb.TokenIds(ids=values))


def stopping(**kw: object) -> pb.GenerateRequest:
    return req(stopping=pb.StoppingCriteria(**kw))  # type: ignore[arg-type]


def sampling(**kw: object) -> pb.GenerateRequest:
    return req(sampling=pb.SamplingParams(**kw))  # type: ignore[arg-type]


CASES: dict[str, tuple[Build, str]] = {
    "no prompt": (lambda i: pb.GenerateRequest(), "prompt is empty: set text or token_ids"),
    "empty text": (lambda i: req(""), "prompt is empty: set text or token_ids"),
    "empty token ids": (lambda i: ids([]), "prompt is empty: token_ids.ids has no tokens"),
    "token ids past the context": (
        lambda i: ids([5] * i.max_model_len),
        "prompt has {L} tokens; the context is {L} tokens",
    ),
    "text past the context": (
        # CJK characters: at least one token each for any tokenizer trained mostly on English.
        lambda i: req("".join(chr(0x4E00 + (k * 7919) % 20000) for k in range(i.max_model_len + 8))),
        "tokens; the context is {L} tokens, so at most {L1} prompt tokens",
    ),
    "max_new_tokens zero": (
        lambda i: stopping(max_new_tokens=0),
        "stopping.max_new_tokens must be >= 1, got 0",
    ),
    "max_new_tokens negative": (
        lambda i: stopping(max_new_tokens=-5),
        "stopping.max_new_tokens must be >= 1, got -5",
    ),
    "max_new_tokens past the context": (
        lambda i: stopping(max_new_tokens=i.max_model_len),
        "stopping.max_new_tokens = {L} does not fit in the context of {L} tokens",
    ),
    "prompt plus max_new_tokens past the context": (
        lambda i: pb.GenerateRequest(
            token_ids=pb.TokenIds(ids=[5] * 10),
            stopping=pb.StoppingCriteria(max_new_tokens=i.max_model_len - 5),
        ),
        "prompt (10 tokens) plus stopping.max_new_tokens ({L5}) is {L5p10} tokens, "
        "more than the context of {L}",
    ),
    "min above max": (
        lambda i: stopping(max_new_tokens=4, min_new_tokens=8),
        "stopping.min_new_tokens = 8 is larger than stopping.max_new_tokens = 4",
    ),
    "negative temperature": (
        lambda i: sampling(temperature=-0.5),
        "sampling.temperature must be in [0, 2], got -0.5",
    ),
    "temperature not a number": (
        lambda i: sampling(temperature=float("nan")),
        "sampling.temperature must be a finite number, got nan",
    ),
    "top_p zero": (lambda i: sampling(top_p=0.0), "sampling.top_p must be in (0, 1], got 0"),
    "top_p above one": (lambda i: sampling(top_p=1.5), "sampling.top_p must be in (0, 1], got 1.5"),
    "top_k negative": (
        lambda i: sampling(top_k=-1),
        "sampling.top_k must be in [0, {V}] (0 disables it), got -1",
    ),
    "min_p above one": (lambda i: sampling(min_p=2.0), "sampling.min_p must be in [0, 1], got 2"),
    "presence penalty": (
        lambda i: sampling(presence_penalty=3.0),
        "sampling.presence_penalty must be in [-2, 2], got 3",
    ),
    "repetition penalty zero": (
        lambda i: sampling(repetition_penalty=0.0),
        "sampling.repetition_penalty must be in (0, 2], got 0",
    ),
    "negative seed": (lambda i: sampling(seed=-1), "sampling.seed must be >= 0, got -1"),
    "too many stop strings": (
        lambda i: stopping(stop=["a", "b", "c", "d", "e"]),
        "stopping.stop has 5 strings; the limit is 4",
    ),
    "stop string too long": (
        lambda i: stopping(stop=["ok", "x" * 33]),
        "stopping.stop[1] is 33 characters long; the limit is 32",
    ),
    "empty stop string": (lambda i: stopping(stop=[""]), "stopping.stop[0] is empty"),
    "prompt token outside the vocabulary": (
        lambda i: ids([1, 2, i.vocab_size]),
        "token_ids.ids[2] = {V} is outside the vocabulary [0, {V})",
    ),
    "negative prompt token": (
        lambda i: ids([-3]),
        "token_ids.ids[0] = -3 is outside the vocabulary [0, {V})",
    ),
    "stop token outside the vocabulary": (
        lambda i: stopping(stop_token_ids=[i.vocab_size + 7]),
        "stopping.stop_token_ids[0] = {V7} is outside the vocabulary [0, {V})",
    ),
    "too many logprobs": (
        lambda i: req(logprobs=pb.LogprobsOptions(generated=True, top_n=i.max_logprobs + 1)),
        "logprobs.top_n must be in [0, {LP}], got {LP1}",
    ),
    "request id too long": (
        lambda i: req(request_id="r" * 200),
        "request_id is 200 characters long; the limit is 128",
    ),
    "request id with spaces": (
        lambda i: req(request_id="a b"),
        "request_id must contain only printable ASCII characters without spaces",
    ),
    "oversized message": (lambda i: req("x" * 70_000), "request is {B} bytes; the limit is 65536 bytes"),
}


def _expected(template: str, info: pb.ModelInfo, request: pb.GenerateRequest) -> str:
    L, V = info.max_model_len, info.vocab_size
    return template.format(
        L=L,
        L1=L - 1,
        L5=L - 5,
        L5p10=L + 5,
        V=V,
        V7=V + 7,
        LP=info.max_logprobs,
        LP1=info.max_logprobs + 1,
        B=request.ByteSize(),
    )


@pytest.mark.parametrize("method", ["Generate", "GenerateStream"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid_argument(
    case: str, method: str, stub: pb_grpc.GenerationServiceStub, model_info: pb.ModelInfo
) -> None:
    build, template = CASES[case]
    request = build(model_info)
    with pytest.raises(grpc.RpcError) as e:
        if method == "Generate":
            stub.Generate(request, timeout=30)
        else:
            list(stub.GenerateStream(request, timeout=30))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert _expected(template, model_info, request) in e.value.details()


def test_tokenize_rejects_oversized_text(stub: pb_grpc.GenerationServiceStub) -> None:
    request = pb.TokenizeRequest(text="y" * 70_000)
    with pytest.raises(grpc.RpcError) as e:
        stub.Tokenize(request, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"request is {request.ByteSize()} bytes; the limit is 65536 bytes" in e.value.details()


def test_message_past_the_transport_cap_gets_grpc_resource_exhausted(
    stub: pb_grpc.GenerationServiceStub,
) -> None:
    # Four times --max-request-bytes and more is refused by gRPC itself before any parsing.
    with pytest.raises(grpc.RpcError) as e:
        stub.Generate(req("z" * 400_000), timeout=30)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in e.value.details()


def test_errors_are_counted_by_code(
    stub: pb_grpc.GenerationServiceStub, grok_server_proc: ServerProcess
) -> None:
    key = 'grok_requests_total{code="INVALID_ARGUMENT",method="Generate"}'
    before = grok_server_proc.metric(key)
    with pytest.raises(grpc.RpcError):
        stub.Generate(req(""), timeout=30)
    wait_metric(grok_server_proc, key, before + 1)  # the server sends a refusal, then counts it


def test_server_still_serves_after_errors(stub: pb_grpc.GenerationServiceStub) -> None:
    resp = stub.Generate(
        pb.GenerateRequest(text="Hello", stopping=pb.StoppingCriteria(max_new_tokens=3, ignore_eos=True)),
        timeout=60,
    )
    assert len(resp.token_ids) == 3
