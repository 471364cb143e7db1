#!/usr/bin/env python
"""grok-router measured on this machine, with real grok-server replicas of the tiny Grok-1 model:

1. Balance: two replicas, ONE client (one gRPC channel, so one HTTP/2 connection) at concurrency 16 sending
   streamed requests with distinct ~100-byte text prompts: each replica's share of the requests through the
   router (from the router's grok_router_upstream_requests_total), and for contrast through a balancer that
   picks a replica per *connection*, round robin, as kube-proxy does for a ClusterIP Service (a small asyncio
   TCP proxy in this script; shares from the replicas' own grok_requests_total).
2. Prefix reuse: two fresh replicas and a workload of a few long shared token-id prefixes, each followed by
   a random suffix, interleaved at random; each replica's KV cache has blocks for half of the prefixes plus a
   few for the requests' own last blocks (which join vLLM's LRU queue when a request ends, as cached blocks
   do). Figures: the prefix-cache hit rate (sum of usage.cached_prompt_tokens / sum of usage.prompt_tokens)
   and the client's time to first token, with prefix affinity (the router's default, --prefix-blocks 8: the
   first 128 tokens are the key) against rotation (--prefix-blocks 0: least loaded, ties in turn). Each
   round uses a prefix set of its own, so that nothing warm carries over from the round before, drawn so
   that the router's rendezvous hash gives each replica half of it (with 8 random keys that happens in 27%
   of draws; 5/3 in 44%, 6/2 in 22%): the figure is about keeping prefixes warm, not about hash luck.
3. The hop's cost in CPU: CPU-seconds (utime + stime from /proc) per 1,000 streamed tokens at concurrency
   1, 8 and 32, of the router process and of grok-server's frontend process (its main pid only, not the
   engine core) in the same runs (client -> router -> one replica), and of vLLM's OpenAI server (its main
   pid only) driven with the same workload over HTTP streaming completions; the two systems alternate, the
   one not measured paused. Every system detokenizes (the gRPC requests do not set token_ids_only; the
   OpenAI API always returns text). Then output tokens/s through the router over direct to the same replica
   at concurrency 32, as the median of the ratios of paired rounds (the order flipping each pair).

All engines run with VLLM_CPU_OMP_THREADS_BIND=nobind (two engines on one machine would otherwise be bound
to the same cores). Servers idle during another measurement are paused (SIGSTOP) or stopped. Figures are
printed, nothing is asserted; the targets are shown next to them.

    .venv/bin/python bench/router.py            # about 10 minutes on 2 cores
    .venv/bin/python bench/router.py --quick    # fewer requests and rounds
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.request import urlopen

import grpc
from benchlib import CACHE, cpu_seconds, percentile, stream_completion
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc

from grok_devcluster.local import (
    LocalServer,
    engine_env,
    free_port,
    http_status,
    launch_server,
    parse_metrics,
    wait,
)
from grok_router.picker import prefix_key, ranking
from grok_server.server.placement import descendants, process_title

ENGINE_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
START_TIMEOUT = 420.0
# vLLM's KV block for the prefix-reuse replicas: the CPU backend's smallest preferred size (its default, 128,
# would make each request's private last block as large as half a prefix; GPUs default to 16). The other
# servers keep vLLM's default.
BLOCK = 32
PREFIX_BLOCKS = 8  # the router's default: 8 blocks of 16 tokens key the prefix


# ---- processes -----------------------------------------------------------------------------------


def wait_http(proc: subprocess.Popen[bytes], url: str, log: Path, what: str) -> None:
    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; log {log}:\n"
                               + log.read_text(errors="replace")[-4000:])
        return http_status(url) == 200

    wait(ready, START_TIMEOUT, f"{what} to answer {url} (log {log})", interval=0.25, transient=(OSError,))


@dataclass
class Proc:
    """A router or vLLM's OpenAI server: a child in its own process group and this session."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    http_port: int
    log: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def metrics(self) -> dict[str, float]:
        with urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=10) as r:
            return parse_metrics(r.read().decode())

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGCONT)  # if paused
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)


def spawn(name: str, cmd: list[str], workdir: Path,
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / f"{name}.log").open("wb") as log:
        return subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
            env=engine_env(workdir, env),
            process_group=0,  # its own group (stop() reaches its children), this session (see local.py)
        )


class Fleet:
    """Every process this script starts, stopped in finally whatever happens."""

    def __init__(self, workdir: Path, model: Path) -> None:
        self.workdir, self.model = workdir, model
        self.servers: list[LocalServer] = []
        self.procs: list[Proc] = []

    def servers_up(self, count: int, tag: str, kv_bytes: int, max_num_seqs: int,
                   block_size: int | None = None) -> list[LocalServer]:
        flags = ["--served-model-name", "tiny", "--enforce-eager", "--kv-cache-memory-bytes", str(kv_bytes),
                 "--max-model-len", "1024", "--dtype", "float32", "--max-num-seqs", str(max_num_seqs),
                 "--max-concurrent-requests", "256"]
        if block_size:
            flags += ["--engine-arg", f"block_size={block_size}"]
        new = []
        for i in range(count):  # started together: loading overlaps
            new.append(launch_server(self.model, self.workdir / f"{tag}-{i}", *flags, env=ENGINE_ENV))
            self.servers.append(new[-1])
        for s in new:
            s.wait_ready(START_TIMEOUT)
        return new

    def router(self, name: str, replicas: Sequence[LocalServer], *flags: str) -> Proc:
        port, http_port = free_port(), free_port()
        cmd = [sys.executable, "-m", "grok_router.main", "--host", "127.0.0.1", "--port", str(port),
               "--http-port", str(http_port), "--model-name", "tiny", *flags]
        for s in replicas:
            cmd += ["--replica", f"127.0.0.1:{s.port},127.0.0.1:{s.metrics_port}"]
        log = self.workdir / name / f"{name}.log"
        p = Proc(name, spawn(name, cmd, self.workdir / name), port, http_port, log)
        self.procs.append(p)
        wait_http(p.popen, f"http://127.0.0.1:{http_port}/readyz", p.log, name)
        return p

    def openai_server(self, kv_bytes: int, max_num_seqs: int, name: str = "vllm-openai") -> Proc:
        port = free_port()
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model),
               "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
               "--max-model-len", "1024", "--dtype", "float32", "--enforce-eager",
               "--kv-cache-memory-bytes", str(kv_bytes), "--max-num-seqs", str(max_num_seqs),
               "--disable-uvicorn-access-log"]
        p = Proc(name, spawn(name, cmd, self.workdir / name, ENGINE_ENV), port, port,
                 self.workdir / name / f"{name}.log")
        self.procs.append(p)
        wait_http(p.popen, f"http://127.0.0.1:{port}/health", p.log, name)
        return p

    def stop_server(self, s: LocalServer) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(s.proc.pid, signal.SIGCONT)
        s.stop(timeout=30)
        self.servers.remove(s)

    def stop_proc(self, p: Proc) -> None:
        p.stop()
        self.procs.remove(p)

    def stop_all(self) -> None:
        for p in list(self.procs):
            with contextlib.suppress(Exception):
                self.stop_proc(p)
        for s in list(self.servers):
            with contextlib.suppress(Exception):
                self.stop_server(s)


def pause(s: LocalServer) -> None:
    os.killpg(s.proc.pid, signal.SIGSTOP)


def resume(s: LocalServer) -> None:
    os.killpg(s.proc.pid, signal.SIGCONT)


def frontend_pid(pid: int) -> int:
    """The main process itself; checked to be neither an engine core nor a worker (their titles say so)."""
    title = process_title(pid)
    assert "EngineCore" not in title and "Worker" not in title, title
    engines = [p for p in descendants(pid) if "EngineCore" in process_title(p)]
    assert engines, f"no EngineCore under {pid}: is {pid} the frontend?"
    return pid


def served_ok(s: LocalServer) -> float:
    return sum(v for k, v in s.metrics().items()
               if k.startswith("grok_requests_total{") and 'code="OK"' in k and "GenerateStream" in k)


# ---- clients -------------------------------------------------------------------------------------


@dataclass
class Sample:
    ttft: float
    tokens: int
    prompt_tokens: int = 0
    cached_tokens: int = 0


async def pool(items: Sequence[object], concurrency: int,
               one: Callable[[object], Awaitable[Sample]]) -> tuple[list[Sample], float]:
    """`concurrency` workers take the items in order, each back to back; (samples, wall seconds)."""
    queue = list(reversed(items))
    samples: list[Sample] = []

    async def worker() -> None:
        while queue:
            samples.append(await one(queue.pop()))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples, time.perf_counter() - start


async def grpc_load(target: str, requests: Sequence[pb.GenerateRequest], concurrency: int
                    ) -> tuple[list[Sample], float]:
    """One channel (one connection) for all the workers, as one client process has."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)

        async def one(request: object) -> Sample:
            start = time.perf_counter()
            s = Sample(0.0, 0)
            async for part in stub.GenerateStream(request, timeout=300):
                if part.token_ids and not s.tokens:
                    s.ttft = time.perf_counter() - start
                s.tokens += len(part.token_ids)
                s.prompt_tokens, s.cached_tokens = part.usage.prompt_tokens, part.usage.cached_prompt_tokens
            return s

        return await pool(requests, concurrency, one)


async def openai_load(url: str, prompt: list[int], max_tokens: int, count: int, concurrency: int
                      ) -> tuple[list[Sample], float]:
    import aiohttp

    body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(_: object) -> Sample:
            return Sample(*await stream_completion(session, f"{url}/v1/completions", body))

        return await pool(range(count), concurrency, one)


class ConnectionBalancer:
    """A TCP proxy that picks a backend per connection, round robin (kube-proxy for a ClusterIP Service)."""

    def __init__(self, backends: Sequence[int]) -> None:
        self.backends = list(backends)
        self.turn = 0
        self.connections: Counter[int] = Counter()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend = self.backends[self.turn % len(self.backends)]
        self.turn += 1
        self.connections[backend] += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", backend)
        except OSError:
            writer.close()
            return

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


# ---- the three measurements ----------------------------------------------------------------------


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)
    echo: bool = True  # False: kept for printing later

    def out(self, text: str = "") -> None:
        if self.echo:
            print(text, flush=True)
        self.lines.append(text)


def met(ok: bool) -> str:
    return "met" if ok else "NOT MET"


async def balance(fleet: Fleet, a: LocalServer, b: LocalServer, args: argparse.Namespace,
                  rep: Report) -> None:
    rng = random.Random(1)
    words = ("grok", "router", "replica", "prefix", "cache", "token", "stream", "model", "serve", "kube",
             "proxy", "channel", "balance", "engine", "block", "queue")
    prompts = []
    for i in range(args.balance_requests):
        text = f"Request {i}: " + " ".join(rng.choice(words) for _ in range(20))
        prompts.append(text[:100])
    requests = [pb.GenerateRequest(text=p, sampling=pb.SamplingParams(temperature=0.0),
                                   stopping=pb.StoppingCriteria(max_new_tokens=16, ignore_eos=True))
                for p in prompts]
    servers = (a, b)
    names = [f"127.0.0.1:{s.port}" for s in servers]
    # Where pure prefix affinity would send these prompts (each has one whole 64-byte block: its key).
    keys = [prefix_key(None, p, PREFIX_BLOCKS) or b"" for p in prompts]
    hashed = Counter(ranking(k, names)[0] for k in keys)
    # How often the hash alone would keep these prompts within 45-55 % each, over other replica names (the
    # names are the replicas' addresses: here random ports).
    ports = random.Random(3).sample(range(20000, 60000), 800)
    trials = [(f"127.0.0.1:{x}", f"127.0.0.1:{y}") for x, y in zip(ports[::2], ports[1::2], strict=True)]
    within = sum(45 <= 100 * sum(ranking(k, pair)[0] == pair[0] for k in keys) / len(keys) <= 55
                 for pair in trials) / len(trials)

    def upstream(m: dict[str, float], name: str) -> float:
        return m.get(f'grok_router_upstream_requests_total{{code="OK",replica="{name}"}}', 0.0)

    def shares(counts: Sequence[float]) -> list[float]:
        return [100 * c / (sum(counts) or 1.0) for c in counts]

    results: dict[str, tuple[list[float], list[float], dict[str, float], float]] = {}
    for mode, blocks in (("default", PREFIX_BLOCKS), ("rotation", 0)):
        router = fleet.router(f"router-balance-{mode}", servers, "--log-level", "WARNING",
                              "--prefix-blocks", str(blocks))
        await grpc_load(router.target, requests[:8], 4)  # warm-up (both replicas' first requests)
        before, served_before = router.metrics(), [served_ok(s) for s in servers]
        _, wall = await grpc_load(router.target, requests, 16)
        after, served_after = router.metrics(), [served_ok(s) for s in servers]
        fleet.stop_proc(router)
        decisions = {k.split('"')[1]: after[k] - before.get(k, 0.0) for k in after
                     if k.startswith("grok_router_routing_decisions_total{")}
        results[mode] = ([upstream(after, n) - upstream(before, n) for n in names],
                         [y - x for x, y in zip(served_before, served_after, strict=True)], decisions, wall)

    proxy = ConnectionBalancer([a.port, b.port])
    await proxy.start()
    try:
        served_before = [served_ok(s) for s in servers]
        _, pwall = await grpc_load(f"127.0.0.1:{proxy.port}", requests, 16)
        served_after = [served_ok(s) for s in servers]
    finally:
        await proxy.close()
    via_proxy = [y - x for x, y in zip(served_before, served_after, strict=True)]

    sh = shares(results["default"][0])
    rot = shares(results["rotation"][0])
    psh = shares(via_proxy)
    hsh = shares([hashed[n] for n in names])
    ok = all(45 <= x <= 55 for x in sh)
    rep.out(f"1. Balance: 2 replicas, one client (one gRPC channel), concurrency 16, {len(requests)} "
            f"streamed requests x 16 tokens, distinct ~100-byte text prompts")
    for mode, label in (("default", f"grok-router (default, --prefix-blocks {PREFIX_BLOCKS})"),
                        ("rotation", "grok-router --prefix-blocks 0")):
        counts, served, decisions, wall = results[mode]
        share = shares(counts)
        shown = ", ".join(f"{k} {v:.0f}" for k, v in sorted(decisions.items()))
        rep.out(f"   {label:<40} replica shares {share[0]:5.1f} % / {share[1]:5.1f} % (requests "
                f"{counts[0]:.0f} / {counts[1]:.0f}, the replicas counted {served[0]:.0f} / {served[1]:.0f}; "
                f"decisions: {shown}; {wall:.1f} s)")
    hash_label = "(their prefix keys, by the hash alone)"
    rep.out(f"   {hash_label:<40} replica shares {hsh[0]:5.1f} % / {hsh[1]:5.1f} % (within 45-55 % for "
            f"{100 * within:.0f} % of {len(trials)} other pairs of replica addresses)")
    rep.out(f"   {'per-connection balancer (kube-proxy-like)':<40} replica shares {psh[0]:5.1f} % / "
            f"{psh[1]:5.1f} % (requests {via_proxy[0]:.0f} / {via_proxy[1]:.0f}; TCP connections "
            f"{proxy.connections[a.port]} / {proxy.connections[b.port]}; {pwall:.1f} s)")
    rep.out(f"   target 45-55 % each through the router (default settings): {met(ok)}")
    rep.summary += [
        f"Balance (2 replicas, 1 client = 1 gRPC channel, C=16, {len(requests)} streams x 16 tokens, "
        f"distinct ~100-byte prompts):",
        f"  grok-router, default:        {sh[0]:.1f} % / {sh[1]:.1f} %   (target 45-55 %: {met(ok)}; "
        f"the prompts' prefix hash alone: {hsh[0]:.1f} / {hsh[1]:.1f}, within 45-55 % for "
        f"{100 * within:.0f} % of replica address pairs)",
        f"  grok-router, prefix-blocks 0: {rot[0]:.1f} % / {rot[1]:.1f} %",
        f"  per-connection balancer:     {psh[0]:.1f} % / {psh[1]:.1f} %   "
        f"({proxy.connections[a.port] + proxy.connections[b.port]} TCP connection(s))",
    ]


async def prefix_reuse(fleet: Fleet, model_config: dict, args: argparse.Namespace, rep: Report) -> None:
    layers = int(model_config["num_hidden_layers"])
    kv_heads = int(model_config["num_key_value_heads"])
    head_dim = int(model_config["hidden_size"]) // int(model_config["num_attention_heads"])
    per_token = layers * 2 * kv_heads * head_dim * 4  # K and V, float32
    block_bytes = per_token * BLOCK
    n_prefix, prefix_len, suffix_len = 8, 256, 16
    prefix_blocks_all = n_prefix * prefix_len // BLOCK
    per_prefix = prefix_len // BLOCK
    # Blocks of one replica: one is vLLM's null block; then half the prefixes' worth, and 6 for the last,
    # private block of each request (the blocks of a finished request, cached or not, join the tail of vLLM's
    # LRU queue alike, so those of the requests between two visits of a prefix count against it too).
    private = 6
    kv_blocks = 1 + n_prefix // 2 * per_prefix + private
    kv_bytes = kv_blocks * block_bytes
    vocab = int(model_config["vocab_size"])

    c, d = fleet.servers_up(2, "prefix", kv_bytes, 16, block_size=BLOCK)
    # The block size, seen from outside: a 180-token prompt sent twice reuses its whole blocks only (176
    # tokens with blocks of 16, 160 with 32, 128 with 128).
    probe = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[3 + (17 * i) % (vocab - 3) for i in range(180)]),
                               token_ids_only=True,
                               stopping=pb.StoppingCriteria(max_new_tokens=1, ignore_eos=True))
    await grpc_load(f"127.0.0.1:{c.port}", [probe], 1)
    again, _ = await grpc_load(f"127.0.0.1:{c.port}", [probe], 1)
    reused = again[0].cached_tokens
    names = [f"127.0.0.1:{s.port}" for s in (c, d)]
    # The third is a diagnostic, outside the target: affinity without the load bound's spills (at 4 calls in
    # flight over 2 replicas the default bound, 1.5 x the average, moves a call whose replica has 3 of them).
    flags = {"affinity": ("--prefix-blocks", str(PREFIX_BLOCKS)),
             "rotation": ("--prefix-blocks", "0"),
             "affinity-b1": ("--prefix-blocks", str(PREFIX_BLOCKS), "--balance", "1")}
    routers = {mode: fleet.router(f"router-{mode}", (c, d), "--log-level", "WARNING", *f)
               for mode, f in flags.items()}
    rng = random.Random(2)

    def prefix_set() -> tuple[list[list[int]], int]:
        for draws in range(1, 1000):
            prefixes = [[rng.randrange(3, vocab) for _ in range(prefix_len)] for _ in range(n_prefix)]
            owners = Counter(ranking(prefix_key(p, None, PREFIX_BLOCKS) or b"", names)[0] for p in prefixes)
            if all(owners[n] == n_prefix // 2 for n in names):
                return prefixes, draws
        raise RuntimeError("no balanced prefix set in 1000 draws")

    def workload(prefixes: list[list[int]]) -> list[pb.GenerateRequest]:
        order = [i % n_prefix for i in range(args.prefix_requests)]
        rng.shuffle(order)
        return [pb.GenerateRequest(
            token_ids=pb.TokenIds(ids=prefixes[i] + [rng.randrange(3, vocab) for _ in range(suffix_len)]),
            token_ids_only=True, sampling=pb.SamplingParams(temperature=0.0),
            stopping=pb.StoppingCriteria(max_new_tokens=4, ignore_eos=True)) for i in order]

    # Warm-up through both routers (first-request costs), on prompts that share nothing with the rounds.
    for r in routers.values():
        warm = [pb.GenerateRequest(token_ids=pb.TokenIds(ids=[rng.randrange(3, vocab) for _ in range(40)]),
                                   token_ids_only=True, stopping=pb.StoppingCriteria(max_new_tokens=2))
                for _ in range(4)]
        await grpc_load(r.target, warm, 2)

    modes = (["affinity", "rotation", "affinity-b1"] if args.quick else
             ["affinity", "rotation", "affinity-b1", "affinity-b1", "rotation", "affinity"])
    results: dict[str, list[Sample]] = {m: [] for m in flags}
    per_round: dict[str, list[float]] = {m: [] for m in flags}
    decisions: dict[str, Counter[str]] = {m: Counter() for m in flags}
    for mode in modes:
        prefixes, draws = prefix_set()
        requests = workload(prefixes)
        router = routers[mode]
        before = router.metrics()
        samples, wall = await grpc_load(router.target, requests, 4)
        after = router.metrics()
        for k, v in after.items():
            if k.startswith("grok_router_routing_decisions_total{"):
                decisions[mode][k.split('"')[1]] += int(v - before.get(k, 0.0))
        hit = sum(s.cached_tokens for s in samples) / sum(s.prompt_tokens for s in samples)
        results[mode] += samples
        per_round[mode].append(hit)
        print(f"   round {mode:<11} hit rate {hit:.3f}, TTFT p50 "
              f"{1000 * percentile([s.ttft for s in samples], 50):.1f} ms, {wall:.1f} s "
              f"(prefix set drawn in {draws} draw(s))", file=sys.stderr, flush=True)
    for r in routers.values():
        fleet.stop_proc(r)
    for s in (c, d):
        fleet.stop_server(s)

    def hit_rate(mode: str) -> float:
        return sum(s.cached_tokens for s in results[mode]) / sum(s.prompt_tokens for s in results[mode])

    def ttft(mode: str, q: float) -> float:
        return 1000 * percentile([s.ttft for s in results[mode]], q)

    ratio = hit_rate("affinity") / max(hit_rate("rotation"), 1e-9)
    ratio_b1 = hit_rate("affinity-b1") / max(hit_rate("rotation"), 1e-9)
    spilled = decisions["affinity"]["affinity_overloaded"]
    rep.out()
    rep.out(f"2. Prefix reuse: 2 replicas, {n_prefix} prefixes x {prefix_len} tokens + {suffix_len}-token "
            f"random suffix, interleaved at random, {args.prefix_requests} requests per round, "
            f"concurrency 4, 4 new tokens")
    rep.out(f"   KV: {layers} layers x 2 x {kv_heads} KV heads x {head_dim} x 4 B = {per_token} B per token; "
            f"block {BLOCK} tokens = {block_bytes // 1024} KiB (measured: a 180-token prompt sent twice "
            f"reused {reused}); per replica --kv-cache-memory-bytes {kv_bytes} = {kv_blocks} blocks "
            f"(1 null, {n_prefix // 2} prefixes' worth, {private} for requests' last blocks) vs "
            f"{prefix_blocks_all} blocks for all {n_prefix} prefixes")
    for mode, mode_flags in flags.items():
        rep.out(f"   {mode:<11} ({' '.join(mode_flags)}): hit rate {hit_rate(mode):.3f} "
                f"(rounds: {' '.join(f'{h:.3f}' for h in per_round[mode])}), client TTFT p50 "
                f"{ttft(mode, 50):.1f} ms, p90 {ttft(mode, 90):.1f} ms; decisions "
                f"{', '.join(f'{k} {v}' for k, v in sorted(decisions[mode].items()))}")
    rep.out(f"   hit rate affinity / rotation = {ratio:.2f}x (target >= 1.5x: {met(ratio >= 1.5)}); "
            f"diagnostic, affinity with --balance 1 / rotation = {ratio_b1:.2f}x")
    rep.summary += [
        f"Prefix reuse (2 replicas, KV cache of each {n_prefix // 2} of the {n_prefix} x "
        f"{prefix_len}-token prefixes' blocks, {args.prefix_requests} req/round x "
        f"{modes.count('affinity')} round(s) per mode, C=4, max_new_tokens 4):",
        f"  prefix-cache hit rate:       affinity {hit_rate('affinity'):.3f} vs rotation "
        f"{hit_rate('rotation'):.3f} = {ratio:.2f}x   (target >= 1.5x: {met(ratio >= 1.5)})",
        f"  affinity calls spilled by the load bound: {spilled} of {len(results['affinity'])}; "
        f"with --balance 1 (none): hit rate {hit_rate('affinity-b1'):.3f} = {ratio_b1:.2f}x rotation",
        f"  client TTFT p50:             affinity {ttft('affinity', 50):.1f} ms vs rotation "
        f"{ttft('rotation', 50):.1f} ms (affinity --balance 1: {ttft('affinity-b1', 50):.1f} ms)",
    ]


async def hop_cost(fleet: Fleet, a: LocalServer, model_config: dict, args: argparse.Namespace,
                   rep: Report) -> None:
    vocab = int(model_config["vocab_size"])
    prompt = [(7 + 131 * i) % (vocab - 10) + 5 for i in range(32)]
    out_tokens = 64
    concurrencies = (1, 8, 32)
    counts = {1: args.cpu_requests_c1, 8: args.cpu_requests, 32: args.cpu_requests}
    req = pb.GenerateRequest(token_ids=pb.TokenIds(ids=prompt), sampling=pb.SamplingParams(temperature=0.0),
                             stopping=pb.StoppingCriteria(max_new_tokens=out_tokens, ignore_eos=True))
    router = fleet.router("router-hop", (a,), "--log-level", "WARNING")
    openai = fleet.openai_server(64 << 20, 32)
    front, api = frontend_pid(a.proc.pid), frontend_pid(openai.popen.pid)
    url, direct = f"http://127.0.0.1:{openai.port}", f"127.0.0.1:{a.port}"
    groups = {"grok": (a.proc.pid, router.popen.pid), "openai": (openai.popen.pid,)}

    async def only(system: str | None) -> None:
        """The other system paused (SIGSTOP: an idle engine still polls), this one running."""
        for name, pgids in groups.items():
            for g in pgids:
                os.killpg(g, signal.SIGCONT if system in (None, name) else signal.SIGSTOP)
        await asyncio.sleep(0.5)

    cpu = {k: dict.fromkeys(concurrencies, 0.0) for k in ("router", "frontend", "openai")}
    tokens = {k: dict.fromkeys(concurrencies, 0) for k in ("grok", "openai")}
    tps: dict[str, dict[int, list[float]]] = {k: {c: [] for c in concurrencies} for k in ("grok", "openai")}
    pairs: list[float] = []
    direct_cpu: list[float] = []
    try:
        await only(None)
        idle0 = {pid: cpu_seconds(pid) for pid in (router.popen.pid, front, api)}
        await asyncio.sleep(args.idle_seconds)
        idle = {pid: 60 * (cpu_seconds(pid) - t) / args.idle_seconds for pid, t in idle0.items()}
        await only("grok")
        await grpc_load(router.target, [req] * 8, 4)  # warm-up
        await grpc_load(direct, [req] * 8, 4)
        await only("openai")
        await openai_load(url, prompt, out_tokens, 8, 4)
        for r in range(args.cpu_rounds):
            for i, conc in enumerate(concurrencies):
                for system in (("grok", "openai") if (r + i) % 2 == 0 else ("openai", "grok")):
                    await only(system)
                    if system == "grok":
                        r0, f0 = cpu_seconds(router.popen.pid), cpu_seconds(front)
                        samples, wall = await grpc_load(router.target, [req] * counts[conc], conc)
                        cpu["router"][conc] += cpu_seconds(router.popen.pid) - r0
                        cpu["frontend"][conc] += cpu_seconds(front) - f0
                    else:
                        o0 = cpu_seconds(api)
                        samples, wall = await openai_load(url, prompt, out_tokens, counts[conc], conc)
                        cpu["openai"][conc] += cpu_seconds(api) - o0
                    n = sum(s.tokens for s in samples)
                    tokens[system][conc] += n
                    tps[system][conc].append(n / wall)
                    print(f"   round {r + 1} C={conc:<2} {system:<6} {n} tokens in {wall:5.1f} s",
                          file=sys.stderr, flush=True)
        await only("grok")
        for i in range(args.pairs):
            rate: dict[str, float] = {}
            for path in (("direct", "router") if i % 2 == 0 else ("router", "direct")):
                f0 = cpu_seconds(front)
                samples, wall = await grpc_load(direct if path == "direct" else router.target,
                                                [req] * args.cpu_requests, 32)
                n = sum(s.tokens for s in samples)
                rate[path] = n / wall
                if path == "direct":
                    direct_cpu.append(1000 * (cpu_seconds(front) - f0) / n)
            pairs.append(rate["router"] / rate["direct"])
            print(f"   pair {i + 1}: direct {rate['direct']:.0f} tok/s, "
                  f"via router {rate['router']:.0f} tok/s", file=sys.stderr, flush=True)
    finally:
        with contextlib.suppress(ProcessLookupError):
            await only(None)
        fleet.stop_proc(router)
        fleet.stop_proc(openai)

    per_k = {k: {c: 1000 * cpu[k][c] / tokens["openai" if k == "openai" else "grok"][c]
                 for c in concurrencies} for k in cpu}
    rep.out()
    rep.out(f"3. CPU-seconds per 1,000 streamed tokens (requests x {out_tokens} tokens: "
            + ", ".join(f"{counts[c]} at C={c}" for c in concurrencies)
            + f", x {args.cpu_rounds} round(s), grok-server and vLLM alternating; 32-token prompt, greedy, "
            "ignore_eos, text detokenized; main process only, not the engine core)")
    rep.out("   | process | " + " | ".join(f"C={c}" for c in concurrencies) + " | idle CPU-s/min |")
    rep.out("   |---|" + "---:|" * (len(concurrencies) + 1))
    labels = {"router": ("grok-router (client -> router -> server)", router.popen.pid),
              "frontend": ("grok-server frontend (same runs)", front),
              "openai": ("vLLM OpenAI server (HTTP, stream)", api)}
    for key, (label, pid) in labels.items():
        rep.out(f"   | {label} | " + " | ".join(f"{per_k[key][c]:.3f}" for c in concurrencies)
                + f" | {idle[pid]:.2f} |")
    rep.out("   output tok/s in the same runs (median): "
            + "; ".join(f"C={c} grok via router {statistics.median(tps['grok'][c]):.0f}, vLLM OpenAI "
                        f"{statistics.median(tps['openai'][c]):.0f}" for c in concurrencies))
    order_ok = {c: per_k["router"][c] <= per_k["frontend"][c] <= per_k["openai"][c] for c in concurrencies}
    rep.out(f"   grok-server frontend without the router, C=32 (paired rounds below): "
            f"{statistics.median(direct_cpu):.3f} CPU-s per 1,000 tokens")
    rep.out("   target router <= grok-server frontend <= vLLM OpenAI server: "
            + ", ".join(f"C={c} {met(ok)}" for c, ok in order_ok.items()))
    median = statistics.median(pairs)
    rep.out(f"   output tokens/s via router / direct, C=32, {args.cpu_requests} requests each: median "
            f"{median:.3f} over {len(pairs)} pairs ({' '.join(f'{p:.3f}' for p in pairs)}); load average "
            f"{os.getloadavg()[0]:.1f} after them")

    rep.summary += [
        f"CPU-seconds per 1,000 streamed tokens (C={'/'.join(str(c) for c in concurrencies)}, "
        f"{out_tokens} tokens per request; main process only):",
        *(f"  {labels[k][0].split(' (')[0]:<28} "
          + " / ".join(f"{per_k[k][c]:.3f}" for c in concurrencies) for k in labels),
        "  target router <= frontend <= vLLM OpenAI: "
        + ", ".join(f"C={c} {met(ok)}" for c, ok in order_ok.items()),
        f"Throughput via router / direct, C=32: median {median:.3f} of {len(pairs)} paired rounds "
        f"({' '.join(f'{p:.3f}' for p in pairs)}; wall clock, the spread is the machine's noise)",
    ]


# ---- main ----------------------------------------------------------------------------------------


def tiny_model() -> Path:
    out = CACHE / "models" / "grok1-tiny-hpcai-seed0"
    if not (out / "config.json").exists():
        from grok_server.checkpoints.tiny import make_tiny_checkpoint

        shutil.rmtree(out, ignore_errors=True)
        make_tiny_checkpoint(out, size="tiny", naming="hpcai", seed=0)
    return out


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"


def header() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    return (f"machine: {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), {cpu}, "
            f"Linux {platform.release()}\n"
            f"versions: Python {platform.python_version()}, grok-server {version('grok-server')}, "
            f"vllm {version('vllm-cpu') if version('vllm') == '-' else version('vllm')}, "
            f"torch {version('torch')}, grpcio {version('grpcio')}, aiohttp {version('aiohttp')}")


async def run(args: argparse.Namespace, fleet: Fleet, config: dict, rep: Report) -> None:
    started = time.monotonic()
    # Parts 1 and 3 share two replicas with a roomy KV cache; part 2 has fresh replicas with a small one.
    a, b = fleet.servers_up(2, "replica", 64 << 20, 32)
    print(f"   two replicas up in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    await balance(fleet, a, b, args, rep)
    rep.out()
    fleet.stop_server(b)
    hop = Report(echo=False)
    await hop_cost(fleet, a, config, args, hop)  # printed after part 2, in the order
    fleet.stop_server(a)
    await prefix_reuse(fleet, config, args, rep)
    for line in hop.lines:
        rep.out(line)
    rep.summary += hop.summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer requests and rounds (a smoke run)")
    p.add_argument("--model", type=Path, help="checkpoint (default: the tiny Grok-1 one, made and cached)")
    args = p.parse_args()
    args.balance_requests = 48 if args.quick else 96
    args.prefix_requests = 48 if args.quick else 96
    args.cpu_requests = 32 if args.quick else 64
    args.cpu_requests_c1 = 8 if args.quick else 16
    args.cpu_rounds = 1 if args.quick else 2
    args.pairs = 3 if args.quick else 8
    args.idle_seconds = 5.0 if args.quick else 10.0
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up when killed too
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    began = time.monotonic()
    model = args.model or tiny_model()
    config = json.loads((model / "config.json").read_text())
    workdir = Path(tempfile.mkdtemp(prefix="grok-bench-router-"))
    print(f"model {model}; logs in {workdir}", file=sys.stderr, flush=True)
    rep = Report()
    rep.out(f"bench/router.py{' --quick' if args.quick else ''}, "
            f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    rep.out(header())
    start_load = load_average()
    rep.out(f"load average (1/5/15 min) at the start: {start_load}")
    rep.out(f"model: {model.name} ({config['num_hidden_layers']} layers, hidden {config['hidden_size']}, "
            f"vocab {config['vocab_size']}), float32, enforce_eager, VLLM_CPU_OMP_THREADS_BIND=nobind")
    rep.out()
    fleet = Fleet(workdir, model)
    ok = False
    try:
        asyncio.run(run(args, fleet, config, rep))
        ok = True
    finally:
        fleet.stop_all()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)
    took = time.monotonic() - began
    print()
    print("---- summary " + "-" * 60)
    print(rep.lines[0])
    print(header())
    print(f"load average (1/5/15 min): {start_load} at the start, "
          f"{load_average()} at the end")
    for line in rep.summary:
        print(line)
    print(f"(run time {took / 60:.1f} min)")
    print("-" * 73)


if __name__ == "__main__":
    main()
