"""A real grok-server's start-up, phase by phase, and its compile cache across replicas (real vLLM, CPU).

The compile-cache test runs engines that compile (no --enforce-eager), with a cache of its own; every other
engine of the suite shares the run's cache (tests/conftest.py) or runs eager.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.request import urlopen

import grpc
import pytest
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc

from grok_devcluster import local
from grok_server.server.startup import PHASES
from tests.server.serverlib import SERVER_START_TIMEOUT, ServerProcess, running_server, wait_serving

COMPILING_FLAGS = ("--kv-cache-memory-bytes", str(64 * 1024 * 1024), "--dtype", "float32",
                   "--max-model-len", "512", "--max-num-seqs", "4")


def startup_report(server: ServerProcess) -> dict:  # type: ignore[type-arg]
    with urlopen(f"{server.http}/startup", timeout=10) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def greedy(server: ServerProcess, n: int = 12) -> list[int]:
    with grpc.insecure_channel(server.target) as ch:
        req = pb.GenerateRequest(text="The quick brown fox", sampling=pb.SamplingParams(temperature=0.0),
                                 stopping=pb.StoppingCriteria(max_new_tokens=n, ignore_eos=True))
        return list(pb_grpc.GenerationServiceStub(ch).Generate(req, timeout=120).token_ids)


def test_a_server_reports_where_its_start_went(grok_server_proc: ServerProcess) -> None:
    report = startup_report(grok_server_proc)
    assert list(report["phases"]) == list(PHASES)
    assert report["seconds"] > 0
    assert sum(report["phases"].values()) == pytest.approx(report["seconds"], rel=0.01, abs=0.01)
    for phase in ("imports", "engine_processes", "weights"):
        assert report["phases"][phase] > 0, phase
    assert report["phases"]["model_class"] + report["phases"]["config"] > 0
    # At one rank on the CPU the model runs in the engine-core process: one engine process, no worker.
    assert report["engine_processes"] == 1
    weights = report["weights"]
    assert weights["bytes"] > 0 and weights["path"].endswith("tiny") and weights["source"] == "shared"
    assert weights["shared_bytes"] == weights["bytes"]  # no --node-cache-dir: the engine read it all there
    assert report["compile_cache"]["state"] == "off"  # an eager engine compiles nothing
    metrics = grok_server_proc.metrics()
    assert metrics["grok_server_startup_seconds"] == pytest.approx(report["seconds"], abs=0.01)
    assert metrics['grok_server_startup_phase_seconds{phase="engine_processes"}'] == pytest.approx(
        report["phases"]["engine_processes"], abs=0.01)
    assert metrics['grok_server_compile_cache{result="off"}'] == 1
    assert "start-up: Ready" in grok_server_proc.log()


def test_faults_at_start_are_said_and_the_server_serves_anyway(tiny_grok_checkpoint: Path,
                                                               tmp_path: Path) -> None:
    """A compile-cache folder that cannot be made (under a regular file: not even root can) and a warm-up
    that cannot finish within its bound: the server starts without the one and abandons the other, says
    which, and serves."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    flags = ("--compile-cache-dir", str(blocker / "cache"), "--warmup-timeout-seconds", "0.000001")
    with running_server(tiny_grok_checkpoint, tmp_path / "srv", *flags) as server:
        report = startup_report(server)
        assert report["compile_cache"]["state"] == "off"
        assert "is not writable" in report["compile_cache"]["reason"]
        assert report["overran"] == ["warmup"]
        log = server.log()
        assert "compile cache off:" in log and "starting without the compile cache" in log
        assert "start-up phase warmup overran its bound" in log
        assert len(greedy(server)) == 12


def _start(model: Path, workdir: Path, cache: Path, host_ip: str) -> ServerProcess:
    # Another HOME, TMPDIR (the workdir), host IP and ports for each: a replica on another pod.
    server = local.launch_server(model, workdir, *COMPILING_FLAGS, "--compile-cache-dir", str(cache),
                                 env={"HOME": str(workdir / "home"), "VLLM_HOST_IP": host_ip})
    wait_serving(server, timeout=SERVER_START_TIMEOUT * 2)  # a compile on a slow machine
    return server


def test_a_second_replica_hits_the_compile_cache_and_serves_the_same_model(tiny_grok_checkpoint: Path,
                                                                           tmp_path: Path) -> None:
    cache = tmp_path / "compile-cache"
    first = _start(tiny_grok_checkpoint, tmp_path / "a", cache, "127.0.0.2")
    try:
        report = startup_report(first)
        assert report["compile_cache"]["state"] == "miss"
        assert "no entry yet" in report["compile_cache"]["reason"]
        assert report["phases"]["compile"] > 0
        tokens = greedy(first)
        # Published just after Ready, off its path.
        local.wait(lambda: "compile cache: published" in first.log(), 120, "the compile cache's publishing")
    finally:
        first.stop()

    second = _start(tiny_grok_checkpoint, tmp_path / "b", cache, "127.0.0.3")
    try:
        hit = startup_report(second)
        assert hit["compile_cache"]["state"] == "hit", hit["compile_cache"]
        assert hit["compile_cache"]["key"] == report["compile_cache"]["key"]
        assert greedy(second) == tokens
        # What the hit saved is measured by bench/cold_start.py (no timing asserted here). That every artifact
        # was found is seen in the folders: the second start's own cache folder holds exactly the entry's
        # files, nothing compiled anew.
        (entry,) = (cache / "entries").iterdir()
        (work,) = (p for p in (cache / "work").iterdir() if not p.name.startswith(("publish-", "discarded-")))
        assert files_under(work) == files_under(entry) - {"grok-cache.json"}
    finally:
        second.stop()
    assert "compile cache: published" not in second.log()
    assert len(list((cache / "entries").iterdir())) == 1
