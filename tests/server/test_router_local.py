"""grok-router in front of the shared grok-server and an address where nothing listens (a replica gone):
retries before output, statuses passed through untouched."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc

from grok_devcluster.local import free_port, parse_metrics
from tests.operatorlib import wait_for
from tests.server.serverlib import ServerProcess


class Router:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, http_port: int) -> None:
        self.proc, self.port, self.http_port = proc, port, http_port

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=30) as answer:
            return parse_metrics(answer.read().decode())


@pytest.fixture(scope="module")
def router(grok_server_proc: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    port, http_port, dead = free_port(), free_port(), free_port()  # nothing listens on `dead`
    log = tmp_path_factory.mktemp("router") / "router.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "grok_router.main", "--host", "127.0.0.1", "--port", str(port),
         "--http-port", str(http_port), "--model-name", "tiny", "--hold-timeout-seconds", "0",
         "--replica", f"127.0.0.1:{dead}",
         "--replica", f"127.0.0.1:{grok_server_proc.port},127.0.0.1:{grok_server_proc.metrics_port}"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT)
    router = Router(proc, port, http_port)
    try:
        wait_for(lambda: router.metrics().get('grok_router_replicas{state="ready"}') == 2, 120,
                 message=f"the router to start (log: {log})")
        yield router
    finally:
        proc.terminate()
        proc.wait(60)
    assert proc.returncode == 0, Path(log).read_text()[-2000:]


def test_calls_refused_by_a_gone_replica_are_retried_on_another(router: Router) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{router.port}") as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        for i in range(8):
            answer = stub.Generate(pb.GenerateRequest(text=f"retry {i}", stopping=pb.StoppingCriteria(
                max_new_tokens=2, ignore_eos=True)), timeout=120)
            assert answer.usage.generated_tokens == 2
            request = pb.GenerateRequest(text=f"stream {i}", stopping=pb.StoppingCriteria(
                max_new_tokens=2, ignore_eos=True))
            streamed = list(stub.GenerateStream(request, timeout=120))
            assert streamed[-1].usage.generated_tokens == 2
    metrics = router.metrics()
    assert metrics.get('grok_router_retries_total{code="UNAVAILABLE"}', 0) >= 1
    assert metrics.get('grok_router_requests_total{api="grpc",code="OK",method="Generate"}') == 8
    assert metrics.get('grok_router_requests_total{api="grpc",code="OK",method="GenerateStream"}') == 8


def test_a_bad_request_is_answered_by_the_replica_untouched_and_not_retried(router: Router) -> None:
    before = router.metrics()
    with grpc.insecure_channel(f"127.0.0.1:{router.port}") as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        for _ in range(3):  # whichever replica comes first, the answer is the working replica's
            with pytest.raises(grpc.RpcError) as bad:
                bad_request = pb.GenerateRequest(text="x", sampling=pb.SamplingParams(temperature=-3))
                stub.Generate(bad_request, timeout=60)
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "temperature" in (bad.value.details() or "")
    after = router.metrics()
    key = 'grok_router_upstream_requests_total{code="INVALID_ARGUMENT",replica="127.0.0.1:'
    assert sum(v for k, v in after.items() if k.startswith(key)) - sum(
        v for k, v in before.items() if k.startswith(key)) == 3  # once each: never retried
