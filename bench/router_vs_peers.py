#!/usr/bin/env python
"""grok-router beside vLLM's own router (`vllm-router`, Rust), each in front of two replicas of the tiny
Grok-1 model, in one run on this machine:

- ours: grok-router in front of two grok-servers, called over OpenAI streaming HTTP and over gRPC;
- theirs: vllm-router (its default policy, cache_aware) in front of two vLLM OpenAI servers, over OpenAI
  streaming HTTP.

The same model, prompts (32 token ids, rotated per request), 64 greedy output tokens (ignore_eos) and load
generator (this script: aiohttp for HTTP, one gRPC channel per target for gRPC) at concurrency 1, 8 and 32.
For each: the router process's CPU-seconds (utime + stime of all its threads, /proc) per 1,000 output tokens,
beside its replicas' main processes; time to first token and the gap between streamed chunks as the client
sees them (p50/p99), through the router and straight to its replicas (in turn) over their own protocol (gRPC
for grok-server, HTTP for vLLM), the router's addition as a ratio of the two; and ours over theirs.

Placement (2 cores): the router under test alone on core 0; replicas (frontends and engine cores) and this
load generator on core 1. Only one system runs at a time: the other one's processes are paused (SIGSTOP;
an idle engine still polls). The order of systems flips every round. vllm-router is installed by this script
on its first run, into an environment of its own (requirements/bench/vllm-router.txt), never the product's.

    .venv/bin/python bench/router_vs_peers.py            # about 5 minutes on 2 cores
    .venv/bin/python bench/router_vs_peers.py --quick    # fewer requests and rounds
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from benchlib import cpu_seconds, percentile, pinned_environment, stream_completion_gaps
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc
from router import Fleet, Proc, frontend_pid, header, load_average, spawn, tiny_model, wait_http

from grok_devcluster.local import free_port

ROOT = Path(__file__).resolve().parents[1]
PINS = ROOT / "requirements" / "bench" / "vllm-router.txt"
ROUTER_CORE, REPLICA_CORE = 0, 1
OUT_TOKENS = 64
CONCURRENCIES = (1, 8, 32)


# ---- vllm-router, in an environment of its own -------------------------------------------------------


def vllm_router_python() -> Path:
    """An environment with vllm-router's pinned wheel, on top of the dependency environment's packages."""
    return pinned_environment(PINS, "vllm-router")


@contextlib.contextmanager
def on_core(core: int) -> Iterator[None]:
    """Processes started inside run on `core` (a child inherits the affinity of the thread that forks it)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# ---- clients -------------------------------------------------------------------------------------


@dataclass
class Stream:
    ttft: float
    tokens: int
    gaps: list[float] = field(default_factory=list)  # between chunks that carry output, as received


@dataclass
class Run:
    streams: list[Stream]
    cpu: float  # the router's CPU-seconds, 0 for a direct run
    server_cpu: float  # the replicas' main processes (grok-server's frontend, vLLM's API server), not engines

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.streams)

    def ttft(self, q: float) -> float:
        return percentile([s.ttft for s in self.streams], q)

    def gap(self, q: float) -> float:
        return percentile([g for s in self.streams for g in s.gaps], q)


async def pool(count: int, concurrency: int, one: Callable[[int], Awaitable[Stream]]) -> list[Stream]:
    """`concurrency` workers, each sending stream after stream, `count` in all; `one(k)` sends the k-th."""
    sent = [0]
    out: list[Stream] = []

    async def worker() -> None:
        while sent[0] < count:
            sent[0] += 1
            out.append(await one(sent[0] - 1))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def rotated(prompt: list[int], k: int) -> list[int]:
    """The k-th request's prompt: the same tokens rotated, so that prefix-aware routers spread the requests
    (one prompt for all would send every request to one replica, on both routers)."""
    turn = k % len(prompt)
    return prompt[turn:] + prompt[:turn]


async def grpc_streams(targets: list[str], prompt: list[int], count: int, concurrency: int) -> list[Stream]:
    requests = [pb.GenerateRequest(token_ids=pb.TokenIds(ids=rotated(prompt, k)),
                                   sampling=pb.SamplingParams(temperature=0.0),
                                   stopping=pb.StoppingCriteria(max_new_tokens=OUT_TOKENS, ignore_eos=True))
                for k in range(len(prompt))]
    channels = [grpc.aio.insecure_channel(t) for t in targets]  # one connection per target
    stubs = [pb_grpc.GenerationServiceStub(c) for c in channels]
    try:

        async def one(k: int) -> Stream:
            start = last = time.perf_counter()
            s = Stream(0.0, 0)
            async for part in stubs[k % len(stubs)].GenerateStream(requests[k % len(requests)], timeout=300):
                if not part.token_ids:
                    continue
                now = time.perf_counter()
                if s.tokens:
                    s.gaps.append(now - last)
                else:
                    s.ttft = now - start
                last = now
                s.tokens += len(part.token_ids)
            return s

        return await pool(count, concurrency, one)
    finally:
        for c in channels:
            await c.close()


async def http_streams(urls: list[str], prompt: list[int], count: int, concurrency: int) -> list[Stream]:
    import aiohttp

    body = {"model": "tiny", "max_tokens": OUT_TOKENS, "temperature": 0.0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(k: int) -> Stream:
            return Stream(*await stream_completion_gaps(session, f"{urls[k % len(urls)]}/v1/completions",
                                                        {**body, "prompt": rotated(prompt, k)}))

        return await pool(count, concurrency, one)


# ---- the two systems ------------------------------------------------------------------------------


@dataclass
class System:
    name: str
    pgids: list[int]  # everything it runs, paused while the other system is measured
    router: Proc
    servers: list[int]  # the replicas' main processes (their engine cores are children)
    paths: dict[str, tuple[str, list[str], bool]]  # path -> (protocol, addresses, through the router)


def vllm_router(fleet: Fleet, python: Path, workers: Sequence[Proc]) -> Proc:
    port, metrics_port = free_port(), free_port()
    cmd = [str(python), "-m", "vllm_router.launch_router", "--host", "127.0.0.1", "--port", str(port),
           "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port), "--log-level", "warning",
           "--worker-urls", *(f"http://127.0.0.1:{w.port}" for w in workers)]
    name = "vllm-router"
    p = Proc(name, spawn(name, cmd, fleet.workdir / name), port, port, fleet.workdir / name / f"{name}.log")
    fleet.procs.append(p)
    wait_http(p.popen, f"http://127.0.0.1:{port}/health", p.log, name)
    return p


def start_systems(fleet: Fleet, python: Path) -> tuple[System, System]:
    with on_core(REPLICA_CORE):
        grok = fleet.servers_up(2, "grok", 64 << 20, 32)
        vllm = [fleet.openai_server(64 << 20, 32, name=f"vllm-openai-{i}") for i in range(2)]
    with on_core(ROUTER_CORE):
        ours = fleet.router("grok-router", grok, "--log-level", "WARNING")
        theirs = vllm_router(fleet, python, vllm)
    return (
        System("grok", [s.proc.pid for s in grok] + [ours.popen.pid], ours,
               [frontend_pid(s.proc.pid) for s in grok], {
            "router HTTP": ("http", [f"http://127.0.0.1:{ours.http_port}"], True),
            "router gRPC": ("grpc", [ours.target], True),
            "direct gRPC": ("grpc", [f"127.0.0.1:{s.port}" for s in grok], False),
        }),
        System("vllm", [p.popen.pid for p in vllm] + [theirs.popen.pid], theirs,
               [frontend_pid(p.popen.pid) for p in vllm], {
            "router HTTP": ("http", [f"http://127.0.0.1:{theirs.port}"], True),
            "direct HTTP": ("http", [f"http://127.0.0.1:{p.port}" for p in vllm], False),
        }),
    )


async def only(systems: Sequence[System], running: System | None) -> None:
    for s in systems:
        for g in s.pgids:
            os.killpg(g, signal.SIGCONT if running in (None, s) else signal.SIGSTOP)
    await asyncio.sleep(0.5)


async def measure(system: System, path: str, prompt: list[int], count: int, concurrency: int) -> Run:
    """Direct paths send the streams to the replicas in turn, as the router spreads them."""
    protocol, addresses, routed = system.paths[path]
    pid = system.router.popen.pid
    before, servers_before = cpu_seconds(pid), sum(cpu_seconds(s) for s in system.servers)
    load = grpc_streams if protocol == "grpc" else http_streams
    streams = await load(addresses, prompt, count, concurrency)
    return Run(streams, cpu_seconds(pid) - before if routed else 0.0,
               sum(cpu_seconds(s) for s in system.servers) - servers_before)


# ---- the report ---------------------------------------------------------------------------------


def merged(runs: Sequence[Run]) -> Run:
    return Run([s for r in runs for s in r.streams], sum(r.cpu for r in runs),
               sum(r.server_cpu for r in runs))


def report(results: dict[tuple[str, str, int], list[Run]], args: argparse.Namespace) -> list[str]:
    lines: list[str] = []
    r = {k: merged(v) for k, v in results.items()}

    def cpu_k(system: str, path: str, c: int) -> float:
        run = r[(system, path, c)]
        return 1000 * run.cpu / max(1, run.tokens)

    lines.append("1. Router CPU-seconds per 1,000 output tokens (all the router's threads)")
    lines.append("   | router, path | " + " | ".join(f"C={c}" for c in CONCURRENCIES) + " |")
    lines.append("   |---|" + "---:|" * len(CONCURRENCIES))
    rows = (("grok", "router gRPC", "grok-router, gRPC"), ("grok", "router HTTP", "grok-router, OpenAI HTTP"),
            ("vllm", "router HTTP", "vllm-router, OpenAI HTTP"))
    for system, path, label in rows:
        lines.append(f"   | {label} | " + " | ".join(f"{cpu_k(system, path, c):.3f}" for c in CONCURRENCIES)
                     + " |")
    ratios = (("router HTTP", "ours HTTP / vllm-router"), ("router gRPC", "ours gRPC / vllm-router"))
    for path, label in ratios:
        lines.append(f"   | {label} | " + " | ".join(
            f"{cpu_k('grok', path, c) / cpu_k('vllm', 'router HTTP', c):.2f}x" for c in CONCURRENCIES) + " |")
    ratio32 = cpu_k("grok", "router HTTP", 32) / cpu_k("vllm", "router HTTP", 32)
    lines.append(f"   target: ours within 2x of vllm-router at C=32 (OpenAI HTTP, like for like): "
                 f"{ratio32:.2f}x " + ("met" if ratio32 <= 2 else "NOT met"))
    def server_k(system: str, path: str, c: int) -> float:
        run = r[(system, path, c)]
        return 1000 * run.server_cpu / max(1, run.tokens)

    lines.append("")
    lines.append("   The replicas' main processes in the same runs (grok-server's frontend, vLLM's API "
                 "server; not their engine cores), CPU-s per 1,000 tokens, and the issue's targets:")
    lines.append("   | | " + " | ".join(f"C={c}" for c in CONCURRENCIES) + " |")
    lines.append("   |---|" + "---:|" * len(CONCURRENCIES))
    for path in ("router gRPC", "router HTTP"):
        lines.append(f"   | grok-server frontends ({path.split()[1]} via the router) | "
                     + " | ".join(f"{server_k('grok', path, c):.3f}" for c in CONCURRENCIES) + " |")
    lines.append("   | vLLM API servers alone (direct HTTP) | "
                 + " | ".join(f"{server_k('vllm', 'direct HTTP', c):.3f}" for c in CONCURRENCIES) + " |")
    for path in ("router gRPC", "router HTTP"):
        lines.append(f"   | router / frontend, {path.split()[1]} (target <= 0.4) | " + " | ".join(
            f"{cpu_k('grok', path, c) / server_k('grok', path, c):.2f}" for c in CONCURRENCIES) + " |")
        both = [(cpu_k("grok", path, c) + server_k("grok", path, c)) / server_k("vllm", "direct HTTP", c)
                for c in CONCURRENCIES]
        lines.append(f"   | (router + frontend) / vLLM API server alone, {path.split()[1]} "
                     "(target C=1 <= 1.0, C=32 <= 0.8) | " + " | ".join(f"{b:.2f}" for b in both) + " |")
    lines.append("")
    lines.append("2. Latency the client sees, ms: p50 / p99 through the router, straight to a replica, and "
                 "the ratio (router / direct)")
    lines.append("   | system, path | C | TTFT router | TTFT direct | ratio | chunk gap router "
                 "| chunk gap direct | ratio | added gap p99 |")
    lines.append("   |---|---:|---:|---:|---:|---:|---:|---:|---:|")
    direct_of = {"grok": "direct gRPC", "vllm": "direct HTTP"}
    for system, path, label in rows:
        for c in CONCURRENCIES:
            via, direct = r[(system, path, c)], r[(system, direct_of[system], c)]
            cell = []
            for f in (via.ttft, direct.ttft, via.gap, direct.gap):
                cell.append(f"{1000 * f(50):.1f} / {1000 * f(99):.1f}")
            ttft_ratio = f"{via.ttft(50) / direct.ttft(50):.2f} / {via.ttft(99) / direct.ttft(99):.2f}"
            gap_ratio = (f"{via.gap(50) / direct.gap(50):.2f} / {via.gap(99) / direct.gap(99):.2f}"
                         if direct.gap(50) > 0 else "-")
            added = 1000 * (via.gap(99) - direct.gap(99))
            lines.append(f"   | {label} | {c} | {cell[0]} | {cell[1]} | {ttft_ratio} | {cell[2]} | {cell[3]} "
                         f"| {gap_ratio} | {added:+.2f} |")
    lines.append(f"   ({args.rounds} round(s); requests per C: "
                 + ", ".join(f"{args.counts[c]} at C={c}" for c in CONCURRENCIES)
                 + f"; {OUT_TOKENS} tokens each. grok-server sends one message per token below 8 requests "
                   "in flight, then coalesces (--stream-interval auto); vLLM's OpenAI server one chunk per "
                   "step.)")
    return lines


async def run(args: argparse.Namespace, fleet: Fleet, prompt: list[int]) -> list[str]:
    python = vllm_router_python()
    grok, vllm = start_systems(fleet, python)
    systems = (grok, vllm)
    results: dict[tuple[str, str, int], list[Run]] = {}
    with on_core(REPLICA_CORE):  # the load generator beside the replicas, away from the router's core
        try:
            for system in systems:  # warm-up: every path once
                await only(systems, system)
                for path in system.paths:
                    await measure(system, path, prompt, 8, 4)
            for rnd in range(args.rounds):
                for i, c in enumerate(CONCURRENCIES):
                    order = systems if (rnd + i) % 2 == 0 else systems[::-1]
                    for system in order:
                        await only(systems, system)
                        for path in system.paths:
                            got = await measure(system, path, prompt, args.counts[c], c)
                            results.setdefault((system.name, path, c), []).append(got)
                            print(f"   round {rnd + 1} C={c:<2} {system.name:<4} {path:<11} {got.tokens} "
                                  f"tokens, router {got.cpu:.2f} CPU-s", file=sys.stderr, flush=True)
        finally:
            with contextlib.suppress(ProcessLookupError):
                await only(systems, None)
    return report(results, args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer requests and rounds (a smoke run)")
    args = p.parse_args()
    args.counts = {1: 8, 8: 32, 32: 64} if args.quick else {1: 16, 8: 64, 32: 128}
    args.rounds = 1 if args.quick else 2
    if os.cpu_count() is None or len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs 2 usable cores (the router on one, the replicas on the other)")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    began = time.monotonic()
    model = tiny_model()
    config = json.loads((model / "config.json").read_text())
    vocab = int(config["vocab_size"])
    prompt = [(7 + 131 * i) % (vocab - 10) + 5 for i in range(32)]
    workdir = Path(tempfile.mkdtemp(prefix="grok-bench-peers-"))
    print(f"model {model}; logs in {workdir}", file=sys.stderr, flush=True)
    start_load = load_average()
    fleet = Fleet(workdir, model)
    ok = False
    try:
        lines = asyncio.run(run(args, fleet, prompt))
        ok = True
    finally:
        fleet.stop_all()
        if not ok:
            print(f"logs kept in {workdir}", file=sys.stderr)
    print()
    print(f"bench/router_vs_peers.py{' --quick' if args.quick else ''}, "
          f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(header())
    pinned = PINS.read_text().split("vllm-router==")[1].split()[0]
    print(f"vllm-router {pinned} (policy cache_aware, its default); placement: the router under test alone "
          f"on core {ROUTER_CORE}; replicas, engines and the load generator on core {REPLICA_CORE}")
    print(f"model: {model.name}, float32, enforce_eager, 2 replicas per router; load average (1/5/15 min): "
          f"{start_load} at the start, {load_average()} at the end")
    print()
    for line in lines:
        print(line)
    print(f"(run time {(time.monotonic() - began) / 60:.1f} min)")


if __name__ == "__main__":
    main()
