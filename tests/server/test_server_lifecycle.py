"""A server of its own, with mTLS, bearer tokens and an admission limit of 2, followed from start to exit.

The tests run in file order on one process: loading -> serving (security, admission) -> SIGTERM drain ->
exit 0.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc

from tests.server.serverlib import (
    Certs,
    EngineHold,
    ServerProcess,
    health_status,
    launch_server,
    make_certs,
    wait_metric,
)

TOKENS = ("first-token-abc", "rotated-token-xyz")
# Generous: the short request in flight at SIGTERM must finish inside it on a slow, loaded machine. The long
# one is held by the test, so no length of grace lets it finish.
GRACE_SECONDS = 10.0
DRAIN_NOTICE = min(5.0, GRACE_SECONDS / 2)  # the server's notice period before GOAWAY
SHORT_TOKENS = 16


@dataclass
class Secure:
    server: ServerProcess
    certs: Certs
    channel: grpc.Channel

    def stub(self) -> pb_grpc.GenerationServiceStub:
        return pb_grpc.GenerationServiceStub(self.channel)


def mtls_channel(target: str, certs: Certs, with_client_cert: bool = True) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=certs.ca.read_bytes(),
        private_key=certs.client_key.read_bytes() if with_client_cert else None,
        certificate_chain=certs.client_cert.read_bytes() if with_client_cert else None,
    )
    return grpc.secure_channel(target, creds)


def auth(token: str = TOKENS[0]) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
def secure(grok_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    workdir = tmp_path_factory.mktemp("grok-server-secure")
    certs = make_certs(workdir / "certs")
    token_file = workdir / "tokens"
    token_file.write_text(f"# accepted tokens\n{TOKENS[0]}\n\n{TOKENS[1]}\n")
    server = launch_server(
        grok_model,
        workdir,
        "--tls-cert",
        str(certs.server_cert),
        "--tls-key",
        str(certs.server_key),
        "--tls-client-ca",
        str(certs.ca),
        "--auth-token-file",
        str(token_file),
        "--max-concurrent-requests",
        "2",
        "--drain-grace-seconds",
        str(GRACE_SECONDS),
    )
    channel = mtls_channel(server.target, certs)
    try:
        yield Secure(server, certs, channel)
    finally:
        channel.close()
        server.stop()


def test_loading_phase_is_not_serving_then_serving(secure: Secure) -> None:
    server, channel = secure.server, secure.channel
    stub = secure.stub()
    statuses: list[str] = []
    refusals: set[str] = set()
    ready_codes: set[int] = set()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, server.log()[-3000:]
        try:
            status = health_status(channel)
        except grpc.RpcError:
            time.sleep(0.1)  # the port is not open yet (imports)
            continue
        statuses.append(status)
        if status == "SERVING":
            break
        ready = server.http_status("/readyz")
        assert server.http_status("/healthz") == 200
        hi = pb.GenerateRequest(text="hi", stopping=pb.StoppingCriteria(max_new_tokens=1))
        try:
            # A generous deadline: on a busy machine loading slows the server's answers too.
            stub.Generate(hi, metadata=auth(), timeout=60)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, (e.code(), e.details())
            refusals.add(e.details())
            ready_codes.add(ready)  # refused as loading: it was loading when /readyz answered too
        else:  # it turned SERVING since the health check; /readyz may have seen either phase
            assert health_status(channel) == "SERVING"
        time.sleep(0.2)
    assert statuses[0] == "NOT_SERVING" and statuses[-1] == "SERVING", statuses
    assert refusals == {"the model is still loading; retry later"}
    assert ready_codes == {503}
    assert server.http_status("/readyz") == 200


def test_plaintext_client_cannot_connect(secure: Secure) -> None:
    with grpc.insecure_channel(secure.server.target) as ch, pytest.raises(grpc.RpcError) as e:
        health_status(ch)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_client_without_certificate_is_refused(secure: Secure) -> None:
    with (
        mtls_channel(secure.server.target, secure.certs, with_client_cert=False) as ch,
        pytest.raises(grpc.RpcError) as e,
    ):
        health_status(ch)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_health_needs_no_token(secure: Secure) -> None:
    assert health_status(secure.channel) == "SERVING"


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ((), "missing authorization metadata: send 'authorization: Bearer <token>'"),
        ((("authorization", "Bearer wrong"),), "invalid bearer token"),
        ((("authorization", f"Basic {TOKENS[0]}"),), "authorization metadata must be 'Bearer <token>'"),
    ],
)
def test_rpcs_need_a_valid_token(secure: Secure, metadata: tuple[tuple[str, str], ...], message: str) -> None:
    stub = secure.stub()
    calls = {
        "Generate": lambda: stub.Generate(pb.GenerateRequest(text="hi"), metadata=metadata, timeout=10),
        "GenerateStream": lambda: list(
            stub.GenerateStream(pb.GenerateRequest(text="hi"), metadata=metadata, timeout=10)
        ),
        "Tokenize": lambda: stub.Tokenize(pb.TokenizeRequest(text="hi"), metadata=metadata, timeout=10),
        "GetModelInfo": lambda: stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=metadata, timeout=10),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
        assert e.value.details() == message, name
    assert secure.server.metric('grok_requests_total{code="UNAUTHENTICATED",method="Generate"}') >= 1


def test_every_listed_token_is_accepted(secure: Secure) -> None:
    stub = secure.stub()
    for token in TOKENS:
        resp = stub.Generate(
            pb.GenerateRequest(text="hi", stopping=pb.StoppingCriteria(max_new_tokens=3, ignore_eos=True)),
            metadata=auth(token),
            timeout=60,
        )
        assert len(resp.token_ids) == 3
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=auth(), timeout=10)
    assert info.max_concurrent_requests == 2


def long_stream(stub: pb_grpc.GenerationServiceStub, max_tokens: int | None = None) -> grpc.Call:
    stopping = pb.StoppingCriteria(ignore_eos=True)
    if max_tokens is not None:
        stopping.max_new_tokens = max_tokens
    request = pb.GenerateRequest(text="Long", stopping=stopping)
    return stub.GenerateStream(request, metadata=auth(), timeout=300)


@dataclass
class Outcome:
    tokens: int
    finish: int
    code: grpc.StatusCode
    details: str


def consume(call: grpc.Call, first: threading.Event) -> Outcome:
    tokens, finish = 0, 0
    try:
        for part in call:
            tokens += len(part.token_ids)
            finish = part.finish_reason
            first.set()
        return Outcome(tokens, finish, grpc.StatusCode.OK, "")
    except grpc.RpcError as e:
        return Outcome(tokens, finish, e.code(), e.details() or "")
    finally:
        first.set()


def start(pool: ThreadPoolExecutor, call: grpc.Call) -> Future[Outcome]:
    first = threading.Event()
    future = pool.submit(consume, call, first)
    assert first.wait(60), "no first token within 60 s"
    return future


def test_admission_limit_answers_resource_exhausted_with_retry_hint(secure: Secure) -> None:
    stub = secure.stub()
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=auth(), timeout=10)
    with ThreadPoolExecutor(2) as pool, EngineHold(secure.server) as engine:
        calls = [long_stream(stub, info.max_model_len - 16) for _ in range(2)]
        futures = [start(pool, c) for c in calls]
        # Held, the two streams are still running when the third call comes and when they are cancelled,
        # on a machine of any speed.
        engine.hold()
        assert secure.server.metric("grok_requests_in_flight") == 2
        with pytest.raises(grpc.RpcError) as e:
            stub.Generate(pb.GenerateRequest(text="third"), metadata=auth(), timeout=10)
        for c in calls:
            c.cancel()
        for f in futures:
            assert f.result(timeout=30).code == grpc.StatusCode.CANCELLED
        engine.release()
    err = e.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details().startswith("the server is at its limit of 2 concurrent requests; retry after ")
    trailing = dict(err.trailing_metadata() or ())
    assert int(trailing["retry-after-ms"]) >= 50
    assert trailing["grpc-retry-pushback-ms"] == trailing["retry-after-ms"]
    assert f"retry after {trailing['retry-after-ms']} ms" in err.details()
    # The server sends a refusal, then counts it.
    wait_metric(secure.server, 'grok_requests_total{code="RESOURCE_EXHAUSTED",method="Generate"}', 1)
    # Slots free up again once the streams are gone.
    wait_metric(secure.server, "grok_requests_in_flight", 0)
    resp = stub.Generate(
        pb.GenerateRequest(text="again", stopping=pb.StoppingCriteria(max_new_tokens=2)),
        metadata=auth(),
        timeout=60,
    )
    assert resp.usage.generated_tokens >= 1


def test_sigterm_drains_then_exits_zero(secure: Secure) -> None:
    server, stub = secure.server, secure.stub()
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=auth(), timeout=10)
    longest = info.max_model_len - 16
    with ThreadPoolExecutor(2) as pool, EngineHold(server) as engine:
        # One request as long as the model allows, held by the test (the engine core frozen) whenever the
        # short one does not need the engine: it is still running when the grace period ends because the test
        # holds it, not because this machine is slow.
        endless = start(pool, long_stream(stub, longest))
        engine.hold()
        # The short one is admitted while the engine is held, so it is surely in flight at SIGTERM.
        short = pool.submit(consume, long_stream(stub, SHORT_TOKENS), threading.Event())
        wait_metric(server, "grok_requests_in_flight", 2)
        sent = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        statuses = []
        deadline = sent + 60
        while time.monotonic() < deadline:
            try:
                statuses.append(health_status(secure.channel))
            except grpc.RpcError as err:  # reported with the statuses below, not as a bare RpcError
                statuses.append(f"{err.code().name}: {err.details()}")
            if statuses[-1] == "NOT_SERVING":
                break
            time.sleep(0.02)
        assert statuses[-1] == "NOT_SERVING", statuses
        assert server.http_status("/readyz") == 503
        with pytest.raises(grpc.RpcError) as e:
            stub.Generate(pb.GenerateRequest(text="late"), metadata=auth(), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert e.value.details() == "the server is shutting down (draining); retry on another replica"

        # The engine runs until the short request is done, then is held again: the long one is then still
        # about `longest - SHORT_TOKENS` tokens from its end, and stays there.
        engine.release()
        done = short.result(timeout=GRACE_SECONDS + 60)  # the grace period bounds it; its outcome says more
        engine.hold()
        assert (done.code, done.tokens) == (grpc.StatusCode.OK, SHORT_TOKENS)
        assert done.finish == pb.FINISH_REASON_LENGTH
        assert not endless.done()

        # After a notice period the server sends GOAWAY and stops listening while in-flight calls go on: a
        # client's next call opens a new connection, which behind a Service reaches a replica that serves,
        # instead of being refused by this one over the old connection for the whole grace period. Until
        # then calls are refused as "draining"; retried, one fails without reaching this server.
        deadline = time.monotonic() + 60
        while True:
            with pytest.raises(grpc.RpcError) as e:
                stub.Generate(pb.GenerateRequest(text="later"), metadata=auth(), timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE, (e.value.code(), e.value.details())
            if "draining" not in (e.value.details() or ""):
                break
            assert time.monotonic() < deadline, "new calls still reached the draining server after 60 s"
            time.sleep(0.1)
        # ... after the notice, and while the held request was still in flight (not at the final shutdown).
        log = server.log()
        assert "drain notice over: closing connections (GOAWAY)" in log
        assert "drain grace period over" not in log
        assert not endless.done()
        assert time.monotonic() - sent >= DRAIN_NOTICE  # the notice period was given

        cut = endless.result(timeout=GRACE_SECONDS + 60)
        assert cut.code == grpc.StatusCode.UNAVAILABLE
        assert cut.details.startswith("the server shut down before the request finished")
        assert time.monotonic() - sent >= GRACE_SECONDS - 0.5  # it was given the grace period
        assert 0 < cut.tokens < longest
        engine.release()  # the server shuts its engine down on the way out
    assert server.wait_exit(timeout=60) == 0
    assert "exiting with status 0" in server.log()
