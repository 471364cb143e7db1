#!/usr/bin/env python
"""Tokens/s of one replica across two "nodes" (processes) against the same replica in one process.

Systems, each a real grok-server on the tiny Grok-1 checkpoint (fp32, eager, the same engine flags):
  tp2-nodes  TP=2 across two nodes: grok-server --nnodes 2 --node-rank 0 (its rank bound to CPU 0) and
             grok-server-worker --node-rank 1 (its rank bound to CPU 1), gloo over loopback
  tp2        TP=2 in one process tree (ranks bound to CPUs 0 and 1, shared memory between them)
  tp1        TP=1 (its rank bound to CPU 0)

All three run at once and are measured alternately: each round sends every system the same closed-loop load
(--concurrency clients, --requests in all, a fixed prompt of 16 token ids and exactly --output-tokens greedy
tokens, GenerateStream with token_ids_only), one after the other, after a short settle. Printed: median
output tokens/s per system over --rounds, the medians of the per-round ratios (paired rounds), and the
CPU-seconds per 1,000 output tokens (user + system time of every process of the system, which barely moves
with other load on a shared machine).

    .venv/bin/python bench/across_nodes.py [--rounds 5] [--concurrency 8] [--requests 32] [--output-tokens 64]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc

from grok_devcluster import local
from grok_server.checkpoints.tiny import make_tiny_checkpoint

ENGINE_FLAGS = ("--dtype", "float32", "--enforce-eager", "--kv-cache-memory-bytes", str(256 << 20),
                "--max-model-len", "1024", "--max-num-seqs", "64")
LOOPBACK = {"VLLM_HOST_IP": "127.0.0.1"}
PROMPT = [3 + (7 * j) % 1000 for j in range(16)]


@dataclass
class System:
    name: str
    target: str
    roots: list[subprocess.Popen[bytes]]  # process-group leaders: all their descendants count
    stops: list = field(default_factory=list)

    def cpu_seconds(self) -> float:
        total = 0.0
        for root in self.roots:
            with contextlib.suppress(psutil.Error):
                procs = [psutil.Process(root.pid)]
                procs += procs[0].children(recursive=True)
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        t = p.cpu_times()
                        total += t.user + t.system
        return total


def start_systems(model: Path, workdir: Path, names: list[str]) -> list[System]:
    systems: list[System] = []
    for name in names:
        d = workdir / name
        if name == "tp1":
            s = local.launch_server(model, d, *ENGINE_FLAGS,
                                    env={"VLLM_CPU_OMP_THREADS_BIND": "0", **LOOPBACK})
            systems.append(System(name, s.target, [s.proc], [s.stop]))
        elif name == "tp2":
            s = local.launch_server(model, d, *ENGINE_FLAGS, "--tp", "2",
                                    env={"VLLM_CPU_OMP_THREADS_BIND": "0|1", **LOOPBACK})
            systems.append(System(name, s.target, [s.proc], [s.stop]))
        elif name == "tp2-nodes":
            shared = (*ENGINE_FLAGS, "--tp", "2", "--nnodes", "2", "--master-addr", "127.0.0.1",
                      "--master-port", str(local.free_port()))
            s = local.launch_server(model, d / "leader", *shared, "--node-rank", "0",
                                    env={"VLLM_CPU_OMP_THREADS_BIND": "0", **LOOPBACK})
            (d / "worker").mkdir(parents=True, exist_ok=True)
            with (d / "worker" / "worker.log").open("wb") as log:
                w = subprocess.Popen(
                    [sys.executable, "-m", "grok_server.server.worker", "--model", str(model), *shared,
                     "--node-rank", "1"],
                    stdout=log, stderr=subprocess.STDOUT, cwd=d / "worker", process_group=0,
                    env={**os.environ, "TMPDIR": str(d / "worker"),
                         "VLLM_CACHE_ROOT": str(d / "worker" / "vllm-cache"), "HF_HUB_OFFLINE": "1",
                         "VLLM_CPU_OMP_THREADS_BIND": "1", **LOOPBACK})

            def stop_worker(w: subprocess.Popen[bytes] = w) -> None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.pid, signal.SIGKILL)
                w.wait(30)

            systems.append(System(name, s.target, [s.proc, w], [s.stop, stop_worker]))
        else:
            raise SystemExit(f"unknown system {name}")
        print(f"starting {name} ...", flush=True)
    for system in systems:
        _wait_generates(system, 900)
        print(f"{system.name} ready", flush=True)
    return systems


def _wait_generates(system: System, timeout: float) -> None:
    """Until a tiny Generate succeeds (the engine is loaded and warm)."""
    with grpc.insecure_channel(system.target) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)

        def generates() -> bool:
            if any(p.poll() is not None for p in system.roots):
                raise RuntimeError(f"{system.name}: a process exited while starting")
            stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=PROMPT),
                                             stopping=pb.StoppingCriteria(max_new_tokens=2)), timeout=30)
            return True

        local.wait(generates, timeout, f"{system.name} to serve", interval=1, transient=(grpc.RpcError,))


def one_round(system: System, concurrency: int, requests: int, output_tokens: int) -> tuple[float, float]:
    """Output tokens/s and CPU-seconds per 1,000 output tokens of one closed-loop round."""
    request = pb.GenerateRequest(token_ids=pb.TokenIds(ids=PROMPT), token_ids_only=True,
                                 sampling=pb.SamplingParams(temperature=0.0),
                                 stopping=pb.StoppingCriteria(max_new_tokens=output_tokens, ignore_eos=True))
    left = [requests]
    tokens = [0]
    lock = threading.Lock()
    with grpc.insecure_channel(system.target) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)

        def client() -> None:
            while True:
                with lock:
                    if left[0] == 0:
                        return
                    left[0] -= 1
                n = sum(len(r.token_ids) for r in stub.GenerateStream(request, timeout=600))
                with lock:
                    tokens[0] += n

        threads = [threading.Thread(target=client) for _ in range(concurrency)]
        cpu0, t0 = system.cpu_seconds(), time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed, cpu = time.perf_counter() - t0, system.cpu_seconds() - cpu0
    return tokens[0] / elapsed, 1000 * cpu / tokens[0]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", default="tp2-nodes,tp2,tp1")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--output-tokens", type=int, default=64)
    ap.add_argument("--settle-seconds", type=float, default=2.0)
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args(argv)
    names = args.systems.split(",")
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="across-nodes-")))
        model = make_tiny_checkpoint(workdir / "model", size="tiny", naming="hpcai", seed=0)
        systems = start_systems(model, workdir, names)
        for system in systems:
            for stop in reversed(system.stops):
                stack.callback(stop)
        for system in systems:  # one untimed round each: first-pass setup
            one_round(system, args.concurrency, args.concurrency, args.output_tokens)
        tps: dict[str, list[float]] = {n: [] for n in names}
        cpu: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.rounds):
            for system in systems:
                time.sleep(args.settle_seconds)  # idle ranks stop spinning on their queues
                t, c = one_round(system, args.concurrency, args.requests, args.output_tokens)
                tps[system.name].append(t)
                cpu[system.name].append(c)
            print(f"round {r + 1}: " + ", ".join(f"{n} {tps[n][-1]:.0f} tok/s" for n in names), flush=True)
        print(f"\nconcurrency {args.concurrency}, {args.requests} requests x {args.output_tokens} output "
              f"tokens per round, {args.rounds} rounds (medians)")
        print(f"{'system':<10} {'tokens/s':>9} {'CPU-s per 1k tokens':>20}")
        for n in names:
            print(f"{n:<10} {statistics.median(tps[n]):>9.0f} {statistics.median(cpu[n]):>20.2f}")
        base = names[0]
        for other in names[1:]:
            ratios = [a / b for a, b in zip(tps[base], tps[other], strict=True)]
            print(f"{base} / {other}: {statistics.median(ratios):.2f} (median of paired rounds; "
                  f"range {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
