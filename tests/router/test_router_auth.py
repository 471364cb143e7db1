"""The front door for real: grok-router processes with API keys, limits and an upstream token in front of a
real grok-server that accepts only that token, over sockets on 127.0.0.1 (issue 26, the router side).

One guarded server (--auth-token-file) serves the module; routers start in a second or two. Every wait is on
a condition with a generous deadline, never on a duration.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grok_devcluster.local import free_port, parse_metrics, wait
from tests.router.keyslib import write_secret
from tests.server.serverlib import ServerProcess, running_server

SERVER_TOKEN = "router-to-server-token"
KEY_A, KEY_B, KEY_C = "key-of-team-a-0123456789", "key-of-team-b-0123456789", "key-of-team-c-0123456789"
LONG_KEY = "L" * 5000
# team-b may generate 6 tokens a minute: one call of 16 tokens puts it 10 under, for about 110 s.
LIMITS = json.dumps({"tenants": {"team-b": {"generatedTokensPerMinute": 6}}})
GEN = pb.StoppingCriteria(max_new_tokens=2, ignore_eos=True)


@dataclass
class Router:
    proc: subprocess.Popen[bytes]
    port: int
    http_port: int
    log: Path
    keys: Path | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=120)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            answer = conn.getresponse()
            return answer.status, dict(answer.getheaders()), answer.read()
        finally:
            conn.close()

    def complete(self, key: str | None, **body: object) -> tuple[int, dict[str, str], dict]:
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        payload = {"model": "tiny", "prompt": "Hello", "max_tokens": 2, "ignore_eos": True, **body}
        status, answer_headers, data = self.request("POST", "/v1/completions", json.dumps(payload).encode(),
                                                    headers)
        return status, answer_headers, json.loads(data)

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=30) as answer:
            return parse_metrics(answer.read().decode())

    def stub(self, channel: grpc.Channel) -> pb_grpc.GenerationServiceStub:
        return pb_grpc.GenerationServiceStub(channel)


def start_router(workdir: Path, replica: str, *flags: str, keys: Path | None = None) -> Router:
    port, http_port = free_port(), free_port()
    log = workdir / f"router-{port}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "grok_router.main", "--host", "127.0.0.1", "--port", str(port),
         "--http-port", str(http_port), "--model-name", "tiny", "--hold-timeout-seconds", "0",
         "--replica", replica, "--api-keys-poll-seconds", "0.2", *flags],
        stdout=log.open("wb"), stderr=subprocess.STDOUT)
    router = Router(proc, port, http_port, log, keys)
    wait(lambda: router.metrics().get('grok_router_replicas{state="ready"}') == 1, 120,
         f"the router to start (log: {log})", transient=(OSError,))
    return router


def stop_router(router: Router) -> str:
    router.proc.terminate()
    router.proc.wait(60)
    text = router.log.read_text()
    assert router.proc.returncode == 0, text[-3000:]
    return text


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("router-auth")


@pytest.fixture(scope="module")
def token_file(workdir: Path) -> Path:
    path = workdir / "server-token"
    path.write_text(f"{SERVER_TOKEN}\n")
    return path


@pytest.fixture(scope="module")
def guarded_server(tiny_grok_checkpoint: Path, workdir: Path, token_file: Path) -> Iterator[ServerProcess]:
    flags = ("--auth-token-file", str(token_file), "--max-concurrent-requests", "16", "--default-max-tokens",
             "16", "--cpu-affinity", "auto")
    with running_server(tiny_grok_checkpoint, workdir / "server", *flags) as server:
        yield server


@pytest.fixture(scope="module")
def router(guarded_server: ServerProcess, workdir: Path, token_file: Path) -> Iterator[Router]:
    keys = workdir / "keys"
    write_secret(keys, {"team-a": KEY_A.encode() + b"\n", "team-b": KEY_B.encode(), "team-empty": b"",
                        "team-long": LONG_KEY.encode(), "team-utf": "clé-ünï".encode(), "Not_A_Tenant": b"k"})
    r = start_router(workdir, f"127.0.0.1:{guarded_server.port},127.0.0.1:{guarded_server.metrics_port}",
                     "--api-keys-dir", str(keys), "--upstream-token-file", str(token_file),
                     "--tenant-limits", LIMITS, keys=keys)
    try:
        yield r
    finally:
        text = stop_router(r)
        for secret in (KEY_A, KEY_B, KEY_C, LONG_KEY[:64], "clé"):
            assert secret not in text, "a key reached the router's log"


def test_no_key_or_a_wrong_key_is_refused_on_both_protocols_probes_stay_open(router: Router) -> None:
    for key in (None, "not-a-key", KEY_A + "x"):
        status, headers, body = router.complete(key)
        assert status == 401, body
        assert headers.get("WWW-Authenticate") == "Bearer"
        assert body["error"]["type"] == "invalid_request_error" and body["error"]["code"] == "invalid_api_key"
        assert "Bearer" in body["error"]["message"] and body["error"]["param"] is None
    assert router.request("GET", "/v1/models")[0] == 401
    assert router.request("GET", "/v1/models", headers={"Authorization": f"Bearer {KEY_A}"})[0] == 200
    with grpc.insecure_channel(f"127.0.0.1:{router.port}") as channel:
        stub = router.stub(channel)
        for metadata in ((), (("authorization", "Bearer nope"),), (("authorization", f"Basic {KEY_A}"),)):
            with pytest.raises(grpc.RpcError) as refused:
                stub.Generate(pb.GenerateRequest(text="hi", stopping=GEN), metadata=metadata, timeout=60)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "authorization: Bearer" in (refused.value.details() or "")
            with pytest.raises(grpc.RpcError) as streamed:
                list(stub.GenerateStream(pb.GenerateRequest(text="hi", stopping=GEN), metadata=metadata,
                                         timeout=60))
            assert streamed.value.code() == grpc.StatusCode.UNAUTHENTICATED
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        answer = stub.Generate(pb.GenerateRequest(text="hi", stopping=GEN),
                               metadata=(("authorization", f"Bearer {KEY_A}"),), timeout=120)
        assert answer.usage.generated_tokens == 2
    for path in ("/healthz", "/readyz", "/metrics"):
        assert router.request("GET", path)[0] == 200
    metrics = router.metrics()
    assert metrics['grok_router_tenant_refusals_total{reason="unauthenticated",tenant="unknown"}'] == 10
    assert metrics['grok_router_tenant_requests_total{code="OK",tenant="team-a"}'] >= 1


def test_odd_key_files_are_skipped_by_name_and_never_crash(router: Router) -> None:
    assert router.proc.poll() is None
    log = router.log.read_text()
    for name in ("team-empty", "team-long", "team-utf", "Not_A_Tenant"):
        assert f"'{name}' skipped" in log, log[-3000:]
    assert router.complete(LONG_KEY)[0] == 401
    assert router.complete("clé-ünï")[0] == 401  # sent as UTF-8 bytes: refused, not a crash


def test_the_server_gets_the_routers_token_never_the_callers_key(router: Router,
                                                                  guarded_server: ServerProcess) -> None:
    with grpc.insecure_channel(guarded_server.target) as channel:
        direct = pb_grpc.GenerationServiceStub(channel)
        for metadata in ((), (("authorization", f"Bearer {KEY_A}"),)):  # without the token, or with a key
            with pytest.raises(grpc.RpcError) as refused:
                direct.Generate(pb.GenerateRequest(text="hi", stopping=GEN), metadata=metadata, timeout=60)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = direct.Generate(pb.GenerateRequest(text="hi", stopping=GEN),
                             metadata=(("authorization", f"Bearer {SERVER_TOKEN}"),), timeout=120)
        assert ok.usage.generated_tokens == 2
    status, _, body = router.complete(KEY_A)  # the server accepts only the token: the router sent it
    assert status == 200 and body["usage"]["completion_tokens"] == 2
    with grpc.insecure_channel(f"127.0.0.1:{router.port}") as channel:
        streamed = list(router.stub(channel).GenerateStream(
            pb.GenerateRequest(text="hi", stopping=GEN), metadata=(("authorization", f"Bearer {KEY_A}"),),
            timeout=120))
        assert streamed[-1].usage.generated_tokens == 2


def test_a_key_added_works_and_a_removed_one_stops_without_a_restart(router: Router) -> None:
    assert router.keys is not None
    pid = router.proc.pid
    assert router.complete(KEY_C)[0] == 401
    base = {"team-a": KEY_A.encode(), "team-b": KEY_B.encode()}
    write_secret(router.keys, {**base, "team-c.2026-12": KEY_C.encode()})
    wait(lambda: router.complete(KEY_C)[0] == 200, 60, "the added key to work")
    write_secret(router.keys, base)
    wait(lambda: router.complete(KEY_C)[0] == 401, 60, "the removed key to stop working")
    assert router.complete(KEY_A)[0] == 200 and router.proc.pid == pid and router.proc.poll() is None


def test_a_tenant_over_its_token_limit_gets_429_while_another_is_served(router: Router) -> None:
    status, _, body = router.complete(KEY_B, max_tokens=16)
    assert status == 200 and body["usage"]["completion_tokens"] == 16
    status, headers, body = router.complete(KEY_B)
    assert status == 429, body
    assert body["error"]["type"] == "rate_limit_error" and body["error"]["code"] == "rate_limit_exceeded"
    retry = int(headers["Retry-After"])
    assert 1 <= retry <= 120  # from the bucket: 10 tokens under at 0.1 a second, less what refilled since
    with grpc.insecure_channel(f"127.0.0.1:{router.port}") as channel:
        stub = router.stub(channel)
        with pytest.raises(grpc.RpcError) as limited:
            stub.Generate(pb.GenerateRequest(text="hi", stopping=GEN),
                          metadata=(("authorization", f"Bearer {KEY_B}"),), timeout=60)
        assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        trailers = dict(limited.value.trailing_metadata() or ())
        assert 1000 <= int(trailers["retry-after-ms"]) <= 120_000
        served = stub.Generate(pb.GenerateRequest(text="hi", stopping=GEN),
                               metadata=(("authorization", f"Bearer {KEY_A}"),), timeout=120)
        assert served.usage.generated_tokens == 2
    assert router.complete(KEY_A)[0] == 200
    metrics = router.metrics()
    assert metrics['grok_router_tenant_refusals_total{reason="tokens",tenant="team-b"}'] == 2
    assert metrics['grok_router_tenant_generated_tokens_total{tenant="team-b"}'] == 16
    assert metrics['grok_router_tenant_prompt_tokens_total{tenant="team-b"}'] >= 1
    assert metrics['grok_router_tenant_requests_total{code="RESOURCE_EXHAUSTED",tenant="team-b"}'] == 2


def test_the_openai_package_with_an_api_key_works_unchanged(router: Router) -> None:
    openai = pytest.importorskip("openai")
    base = f"http://127.0.0.1:{router.http_port}/v1"
    client = openai.OpenAI(base_url=base, api_key=KEY_A, max_retries=0, timeout=120)
    answer = client.completions.create(model="tiny", prompt="Hello", max_tokens=2,
                                       extra_body={"ignore_eos": True})
    assert answer.usage.completion_tokens == 2
    chunks = list(client.completions.create(model="tiny", prompt="Hello", max_tokens=2, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}))
    assert chunks[-1].usage.completion_tokens == 2
    assert [m.id for m in client.models.list()] == ["tiny"]
    wrong = openai.OpenAI(base_url=base, api_key="wrong", max_retries=0, timeout=120)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.completions.create(model="tiny", prompt="Hello", max_tokens=2)
    assert refused.value.code == "invalid_api_key"


@pytest.fixture(scope="module")
def bare_router(workdir: Path) -> Iterator[Router]:
    """No keys, no server (nothing listens at its replica): what it answers, it answers itself."""
    r = start_router(workdir, f"127.0.0.1:{free_port()}")
    try:
        yield r
    finally:
        stop_router(r)


BAD_BODIES = {
    "not UTF-8": (b'{"prompt": "\xff\xfe"}', {"Content-Type": "application/json"}, 400),
    "unknown charset": (b'{"prompt": "x"}', {"Content-Type": "application/json; charset=nope"}, 400),
    "not JSON": (b"hello", {"Content-Type": "application/json"}, 400),
    "not an object": (b"[1]", {}, 400),
    "empty": (b"", {}, 400),
    "nested too deeply": (b"[" * 100_000 + b"]" * 100_000, {}, 400),
    "a huge integer": (b'{"prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}", {}, 400),
    "a lone surrogate": (b'{"prompt": "\\ud800"}', {}, 400),
    "a lone surrogate in stop": (b'{"prompt": "x", "stop": "\\udfff"}', {}, 400),
    "bad gzip": (b"not gzip", {"Content-Encoding": "gzip"}, 400),
    "over the size limit": (b'{"prompt": "' + b"a" * (9 * 1024 * 1024) + b'"}', {}, 413),
    "a non-ASCII Authorization": (b'{"prompt": "x"}', {"Authorization": "Bearer \xff\xfe"}, 400),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_input_gets_a_4xx_in_openais_shape_never_a_500(bare_router: Router, case: str) -> None:
    body, headers, expected = BAD_BODIES[case]
    status, answer_headers, data = bare_router.request("POST", "/v1/completions", body, headers)
    assert status == expected, data[:300]
    assert answer_headers["Content-Type"].startswith("application/json")
    error = json.loads(data)["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert bare_router.proc.poll() is None


def test_wrong_methods_and_paths_answer_in_openais_shape(bare_router: Router) -> None:
    for method, path, expected in (("GET", "/v1/completions", 405), ("POST", "/v1/nothing", 404)):
        status, _, data = bare_router.request(method, path)
        assert status == expected and json.loads(data)["error"]["message"]
    status, _, data = bare_router.request("POST", "/v1/chat/completions", b"\xff")
    assert status == 400 and json.loads(data)["error"]["code"] == "chat_template_missing"


def test_a_folder_without_keys_refuses_every_call_saying_so(workdir: Path) -> None:
    empty = workdir / "no-keys"
    write_secret(empty, {"team-empty": b"   "})
    r = start_router(workdir, f"127.0.0.1:{free_port()}", "--api-keys-dir", str(empty), keys=empty)
    try:
        status, _, body = r.complete("anything")
        assert status == 401 and "no API keys configured" in body["error"]["message"]
        with grpc.insecure_channel(f"127.0.0.1:{r.port}") as channel, pytest.raises(grpc.RpcError) as refused:
            r.stub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=60)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "no API keys configured" in (refused.value.details() or "")
    finally:
        log = stop_router(r)
    assert log.count("holds no valid key") == 1


def test_a_grpc_message_that_does_not_parse_is_invalid_argument(bare_router: Router) -> None:
    text_field = pb.GenerateRequest.DESCRIPTOR.fields_by_name["text"].number
    not_utf8 = bytes([(text_field << 3) | 2, 2, 0xFF, 0xFE])  # a string field that is not UTF-8
    with grpc.insecure_channel(f"127.0.0.1:{bare_router.port}") as channel:
        for method in ("Generate", "GenerateStream"):
            call = (channel.unary_unary if method == "Generate" else channel.unary_stream)(
                f"/grok.serving.v1.GenerationService/{method}", request_serializer=lambda b: b,
                response_deserializer=lambda b: b)
            with pytest.raises(grpc.RpcError) as refused:
                answer = call(not_utf8, timeout=30)
                if method == "GenerateStream":
                    list(answer)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
            assert "grok.serving.v1.GenerateRequest" in (refused.value.details() or "")


def test_odd_authorization_headers_on_every_model_path_get_a_4xx_in_openais_shape(workdir: Path) -> None:
    keys = workdir / "odd-headers-keys"
    write_secret(keys, {"team-a": KEY_A.encode()})
    r = start_router(workdir, f"127.0.0.1:{free_port()}", "--api-keys-dir", str(keys), keys=keys)
    try:
        paths = (("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models"))
        for method, path in paths:
            for value in ("Bearer \xff\xfe", f"Bearer {KEY_A}\xff", "Basic abc", "Bearer " + "k" * 8000):
                body = b'{"prompt": "\xff"}' if method == "POST" else None
                status, headers, data = r.request(method, path, body, {"Authorization": value})
                assert status in (400, 401), (path, value[:20], status, data[:200])
                assert headers["Content-Type"].startswith("application/json")
                assert json.loads(data)["error"]["message"]
        # A control character in a header, or a header over 8190 bytes, is refused by the HTTP parser itself,
        # before any route: a plain 400 as any HTTP server answers a malformed request (uvicorn too), never a
        # 5xx; the router lives on.
        for value in (b"Bearer \x00k", b"Bearer " + b"k" * 20_000):
            with socket.create_connection(("127.0.0.1", r.http_port), timeout=60) as conn:
                conn.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: " + value
                             + b"\r\nConnection: close\r\n\r\n")
                answer = b""
                while chunk := conn.recv(65536):
                    answer += chunk
            assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), answer[:200]
        assert r.request("GET", "/healthz")[0] == 200 and r.proc.poll() is None
    finally:
        stop_router(r)
