"""Every RPC of the shared server, over a real socket: health, reflection, model info, tokenize, generate."""

from __future__ import annotations

import grpc
import pytest
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.server.serverlib import ServerProcess, health_status, reflect

SERVICE = "grok.serving.v1.GenerationService"


def greedy(prompt: str | list[int], n: int, **kw: object) -> pb.GenerateRequest:
    req = pb.GenerateRequest(
        sampling=pb.SamplingParams(temperature=0.0),
        stopping=pb.StoppingCriteria(max_new_tokens=n, ignore_eos=True),
        **kw,  # type: ignore[arg-type]
    )
    if isinstance(prompt, str):
        req.text = prompt
    else:
        req.token_ids.ids.extend(prompt)
    return req


def test_health_is_serving_for_server_and_service(channel: grpc.Channel) -> None:
    assert health_status(channel) == "SERVING"
    assert health_status(channel, SERVICE) == "SERVING"
    with pytest.raises(grpc.RpcError) as e:
        health_status(channel, "no.such.Service")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_watch_streams_current_status(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    watch = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
    first = next(iter(watch))
    watch.cancel()
    assert first.status == health_pb2.HealthCheckResponse.SERVING


def test_http_probes_and_metrics_endpoint(grok_server_proc: ServerProcess) -> None:
    assert grok_server_proc.http_status("/readyz") == 200
    assert grok_server_proc.http_status("/healthz") == 200
    assert grok_server_proc.http_status("/nope") == 404
    assert "grok_server_ready 1.0" in grok_server_proc.metrics_text()


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_lists_and_describes_the_services(channel: grpc.Channel, version: str) -> None:
    names, files = reflect(channel, version, SERVICE)
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert "grok/serving/v1/generation.proto" in files


def test_model_info_reports_model_and_limits(model_info: pb.ModelInfo) -> None:
    assert model_info.max_model_len > 64
    assert model_info.vocab_size > 100
    assert model_info.tensor_parallel_size == 1
    assert model_info.max_concurrent_requests == 64
    assert model_info.max_stop_strings == 4
    assert model_info.max_stop_string_length == 32
    assert model_info.default_max_tokens == 16
    assert model_info.max_request_bytes == 65536
    assert model_info.architecture
    assert model_info.engine_version.startswith("vllm")
    assert model_info.server_version


def test_tokenize_matches_the_model_tokenizer(stub: pb_grpc.GenerationServiceStub, hf_tokenizer) -> None:  # type: ignore[no-untyped-def]
    text = "Hello world, the quick brown fox"
    resp = stub.Tokenize(pb.TokenizeRequest(text=text, return_tokens=True), timeout=10)
    assert list(resp.token_ids) == hf_tokenizer.encode(text)
    assert list(resp.tokens) == hf_tokenizer.convert_ids_to_tokens(hf_tokenizer.encode(text))
    plain = stub.Tokenize(pb.TokenizeRequest(text=text, add_special_tokens=False), timeout=10)
    assert list(plain.token_ids) == hf_tokenizer.encode(text, add_special_tokens=False)
    assert not plain.tokens


def test_generate_text_prompt(stub: pb_grpc.GenerationServiceStub, hf_tokenizer) -> None:  # type: ignore[no-untyped-def]
    prompt = "The quick brown fox"
    resp = stub.Generate(greedy(prompt, 12, request_id="my-req-1"), timeout=60)
    assert resp.request_id == "my-req-1"
    assert len(resp.token_ids) == 12
    assert resp.finish_reason == pb.FINISH_REASON_LENGTH
    assert resp.usage.prompt_tokens == len(hf_tokenizer.encode(prompt))
    assert resp.usage.generated_tokens == 12
    assert resp.text == hf_tokenizer.decode(list(resp.token_ids), skip_special_tokens=True)
    assert not resp.prompt_token_ids  # no echo asked


def test_generate_token_ids_prompt_and_echo(stub: pb_grpc.GenerationServiceStub, hf_tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids = hf_tokenizer.encode("Hello world")
    by_ids = stub.Generate(greedy(ids, 8, echo=True), timeout=60)
    by_text = stub.Generate(greedy("Hello world", 8), timeout=60)
    assert list(by_ids.token_ids) == list(by_text.token_ids)  # same prompt tokens, greedy: same output
    assert list(by_ids.prompt_token_ids) == ids
    assert by_ids.prompt_text == hf_tokenizer.decode(ids)
    assert by_ids.request_id  # assigned by the server when the caller sends none


def test_stream_deltas_add_up_to_the_unary_result(stub: pb_grpc.GenerationServiceStub) -> None:
    unary = stub.Generate(greedy("Once upon a time", 20), timeout=60)
    parts = list(stub.GenerateStream(greedy("Once upon a time", 20), timeout=60))
    assert len(parts) >= 2
    assert [p.token_ids[i] for p in parts for i in range(len(p.token_ids))] == list(unary.token_ids)
    assert "".join(p.text for p in parts) == unary.text
    assert all(p.finish_reason == pb.FINISH_REASON_UNSPECIFIED for p in parts[:-1])
    assert parts[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert parts[-1].usage.generated_tokens == 20
    assert len({p.request_id for p in parts}) == 1


def test_default_max_tokens_applies_when_unset(stub: pb_grpc.GenerationServiceStub) -> None:
    req = pb.GenerateRequest(text="Hello", stopping=pb.StoppingCriteria(ignore_eos=True))
    assert len(stub.Generate(req, timeout=60).token_ids) == 16  # --default-max-tokens 16


def test_same_seed_same_output(stub: pb_grpc.GenerationServiceStub) -> None:
    def sample(seed: int) -> list[int]:
        req = pb.GenerateRequest(
            text="Tell me a story",
            sampling=pb.SamplingParams(temperature=1.0, seed=seed),
            stopping=pb.StoppingCriteria(max_new_tokens=24, ignore_eos=True),
        )
        return list(stub.Generate(req, timeout=60).token_ids)

    first = sample(1234)
    assert sample(1234) == first
    assert sample(1234) == first
    assert sample(99) != first  # 24 tokens sampled from a random model: a collision is vanishingly unlikely


def test_stop_token_id_ends_generation(stub: pb_grpc.GenerationServiceStub) -> None:
    full = list(stub.Generate(greedy("Hello world", 16), timeout=60).token_ids)
    stop_id = full[5]
    first_at = full.index(stop_id)
    req = greedy("Hello world", 16)
    req.stopping.stop_token_ids.append(stop_id)
    resp = stub.Generate(req, timeout=60)
    assert resp.finish_reason == pb.FINISH_REASON_STOP
    assert resp.WhichOneof("stop_reason") == "stop_token_id"
    assert resp.stop_token_id == stop_id
    assert list(resp.token_ids) == full[: first_at + 1]


def test_min_new_tokens_holds_back_stop_tokens(stub: pb_grpc.GenerationServiceStub) -> None:
    full = list(stub.Generate(greedy("Hello world", 16), timeout=60).token_ids)
    req = greedy("Hello world", 16)
    req.stopping.stop_token_ids.append(full[0])
    req.stopping.min_new_tokens = 6
    resp = stub.Generate(req, timeout=60)
    assert len(resp.token_ids) >= 6


def stop_candidate(full: str) -> str:
    """A printable piece from the middle of a greedy text: generation with it as a stop string must end
    right before it."""
    candidates = [
        full[i : i + 2]
        for i in range(3, len(full) - 2)
        if full[i : i + 2].isprintable() and full[i : i + 2].strip() and "\ufffd" not in full[i : i + 2]
    ]
    assert candidates, f"no printable stop candidate in {full!r}"
    return candidates[0]


def test_stop_string_truncates_text(stub: pb_grpc.GenerationServiceStub) -> None:
    full = stub.Generate(greedy("Hello world", 24), timeout=60).text
    stop = stop_candidate(full)
    req = greedy("Hello world", 24)
    req.stopping.stop.append(stop)
    resp = stub.Generate(req, timeout=60)
    assert resp.finish_reason == pb.FINISH_REASON_STOP
    assert resp.stop_string == stop
    assert resp.text == full[: full.index(stop)]
    req.stopping.include_stop_str_in_output = True
    assert stub.Generate(req, timeout=60).text == full[: full.index(stop) + len(stop)]


def test_logprobs_of_generated_tokens(stub: pb_grpc.GenerationServiceStub) -> None:
    req = greedy("Hello world", 6)
    req.logprobs.generated = True
    req.logprobs.top_n = 3
    resp = stub.Generate(req, timeout=60)
    assert [lp.token_id for lp in resp.logprobs] == list(resp.token_ids)
    for lp in resp.logprobs:
        assert lp.logprob <= 0.0
        assert lp.rank == 1  # greedy picks the most likely token
        assert len(lp.top) == 3
        assert lp.top[0].token_id == lp.token_id
        assert lp.top[0].logprob == pytest.approx(lp.logprob)
        assert lp.top[0].logprob >= lp.top[1].logprob >= lp.top[2].logprob


def test_prompt_logprobs(stub: pb_grpc.GenerationServiceStub, hf_tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids = hf_tokenizer.encode("Hello world again")
    req = greedy(ids, 2)
    req.logprobs.prompt = True
    resp = stub.Generate(req, timeout=60)
    assert list(resp.prompt_token_ids) == ids
    # The first prompt token has no log-probability: nothing precedes it.
    assert [lp.token_id for lp in resp.prompt_logprobs] == ids[1:]
    assert all(lp.logprob <= 0.0 and lp.rank >= 1 for lp in resp.prompt_logprobs)


def test_token_ids_only_returns_the_same_tokens_without_text(stub: pb_grpc.GenerationServiceStub) -> None:
    full = stub.Generate(greedy("Hello world", 24), timeout=60)
    req = greedy("Hello world", 24, token_ids_only=True)
    req.logprobs.generated = True
    req.logprobs.top_n = 2
    resp = stub.Generate(req, timeout=60)
    assert list(resp.token_ids) == list(full.token_ids) and full.text
    assert resp.text == ""
    assert all(lp.text == "" and all(t.text == "" for t in lp.top) for lp in resp.logprobs)
    parts = list(stub.GenerateStream(req, timeout=60))
    assert [t for p in parts for t in p.token_ids] == list(full.token_ids)
    assert all(p.text == "" for p in parts)
    # Stop strings still end generation (the server decodes for them) but no text is sent.
    stop = stop_candidate(full.text)
    req.stopping.stop.append(stop)
    stopped = stub.Generate(req, timeout=60)
    assert stopped.finish_reason == pb.FINISH_REASON_STOP and stopped.stop_string == stop
    assert len(stopped.token_ids) < len(full.token_ids) and stopped.text == ""
