"""OpenAI completions in grok.serving.v1 terms (pure): requests, responses, errors."""

from __future__ import annotations

import grpc
import pytest
from grok.serving.v1 import generation_pb2 as pb

from grok_router import openai_api as oai


def test_a_full_request_maps_to_generate_request() -> None:
    c = oai.completion_request({
        "model": "m", "prompt": "Hello", "max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": 5,
        "seed": 3, "stop": ["\n", "END"], "logprobs": 2, "echo": True, "stream": True,
        "stream_options": {"include_usage": True}, "ignore_eos": True, "min_tokens": 2, "user": "u",
        "presence_penalty": 0.1, "frequency_penalty": 0.2, "repetition_penalty": 1.1, "stop_token_ids": [2],
    }, "m")
    r = c.request
    assert r.text == "Hello" and r.stopping.max_new_tokens == 7 and r.stopping.min_new_tokens == 2
    assert r.sampling.temperature == 0.5 and r.sampling.top_k == 5 and r.sampling.seed == 3
    assert pytest.approx(r.sampling.top_p) == 0.9
    assert list(r.stopping.stop) == ["\n", "END"] and list(r.stopping.stop_token_ids) == [2]
    assert r.stopping.ignore_eos and r.echo and r.logprobs.generated and r.logprobs.top_n == 2
    assert c.stream and c.include_usage and c.echo and c.logprobs


def test_prompts_as_text_token_ids_or_a_batch_of_one() -> None:
    assert oai.completion_request({"prompt": [1, 2, 3]}, "m").request.token_ids.ids == [1, 2, 3]
    assert oai.completion_request({"prompt": ["one"]}, "m").request.text == "one"
    assert oai.completion_request({"prompt": [[4, 5]]}, "m").request.token_ids.ids == [4, 5]


@pytest.mark.parametrize(("body", "param", "status"), [
    ({"prompt": "x", "max_tokens": "many"}, "max_tokens", 400),
    ({"prompt": "x", "max_tokens": 1.5}, "max_tokens", 400),
    ({"prompt": "x", "temperature": True}, "temperature", 400),
    ({"prompt": "x", "stop": [1]}, "stop", 400),
    ({"prompt": "x", "n": 2}, "n", 400),
    ({"prompt": "x", "logit_bias": {"1": 5}}, "logit_bias", 400),
    ({"prompt": ["a", "b"]}, "prompt", 400),
    ({"prompt": [1, -2]}, "prompt", 400),
    ({"prompt": "x", "stream": "yes"}, "stream", 400),
    ({"prompt": "x", "frobnicate": 1}, "frobnicate", 400),
    ({"max_tokens": 3}, "prompt", 400),
    ({"prompt": "x", "model": "gpt-4"}, "model", 404),
])
def test_bad_parameters_name_the_field(body: dict, param: str, status: int) -> None:
    with pytest.raises(oai.BadRequest) as err:
        oai.completion_request(body, "m")
    assert err.value.param == param and err.value.status == status
    assert param in str(err.value) or param == "model"


def test_responses_and_chunks_in_openais_shape() -> None:
    message = pb.GenerateResponse(text=" world", finish_reason=pb.FINISH_REASON_EOS, prompt_text="Hello",
                                  usage=pb.Usage(prompt_tokens=1, generated_tokens=2))
    message.logprobs.add(token_id=1, logprob=-0.5, text=" wor", top=[pb.TopLogprob(token_id=1, logprob=-0.5,
                                                                                    text=" wor")])
    message.logprobs.add(token_id=2, logprob=-0.25, text="ld")
    c = oai.completion_request({"prompt": "Hello", "echo": True, "logprobs": 1}, "m")
    body = oai.completion_response(message, c, "m", "cmpl-1", 7)
    assert body["object"] == "text_completion" and body["model"] == "m" and body["created"] == 7
    (choice,) = body["choices"]
    assert choice["text"] == "Hello world" and choice["finish_reason"] == "stop"
    assert choice["logprobs"]["tokens"] == [" wor", "ld"] and choice["logprobs"]["text_offset"] == [0, 4]
    assert choice["logprobs"]["top_logprobs"][0] == {" wor": -0.5}
    assert body["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    running = oai.choice(pb.GenerateResponse(text="a"), oai.completion_request({"prompt": "x"}, "m"))
    assert running["finish_reason"] is None and running["logprobs"] is None
    assert oai.sse("[DONE]") == b"data: [DONE]\n\n"


@pytest.mark.parametrize(("code", "status"), [
    (grpc.StatusCode.INVALID_ARGUMENT, 400), (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    (grpc.StatusCode.UNAVAILABLE, 503), (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    (grpc.StatusCode.UNAUTHENTICATED, 401), (grpc.StatusCode.INTERNAL, 500),
])
def test_grpc_failures_become_http_statuses_in_openais_shape(code: grpc.StatusCode, status: int) -> None:
    got, body = oai.grpc_error(code, "why")
    assert got == status and body["error"]["message"] == "why" and body["error"]["code"] == code.name.lower()


@pytest.mark.parametrize("body", [{"prompt": "x"}, {"prompt": "x", "logprobs": 1},
                                  {"prompt": "x", "echo": True}])
def test_stream_events_are_the_chunks_encoded_in_full(body: dict) -> None:
    """ChunkWriter's per-stream template gives the same bytes as building and encoding each chunk."""
    completion = oai.completion_request(body, "m")
    messages = [pb.GenerateResponse(text=t, prompt_text="x" if i == 0 else "") for i, t in
                enumerate(["He", 'said "é\u2028"\n', "\\", ""])]
    messages.append(pb.GenerateResponse(text=".", finish_reason=pb.FINISH_REASON_LENGTH))
    for m in messages:
        m.logprobs.add(token_id=1, logprob=-0.5, text=m.text)
    writer = oai.ChunkWriter(completion, 'm "q"', "cmpl-ü", 7)
    offset = 0
    for m in messages:
        part = oai.choice(m, completion, offset)
        offset += len(part["text"])
        assert writer.event(m) == oai.sse(oai.chunk([part], 'm "q"', "cmpl-ü", 7))
