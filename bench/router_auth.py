#!/usr/bin/env python
"""grok-router's front door measured on this machine (issue 26): what API keys and per-tenant limits cost
the router in CPU, and how far the limits hold with two router replicas.

The replicas here are a fake upstream (a grpc.aio GenerationService in its own process that streams N
one-token messages with cumulative usage at once): the router's own work is what is measured, not an
engine's. Routers are real `grok-router` processes; clients are grpc.aio (GenerateStream) and aiohttp
(POST /v1/completions) in this process.

1. CPU per request: two routers in front of the same upstream, one plain (no flags), one with
   --api-keys-dir (8 tenants, 2 keys each), --upstream-token-file and --tenant-limits (limits high enough to
   refuse nothing, but checked and counted on every call). Paired rounds, the order flipping each pair: in a
   round each router serves the same workload (gRPC streams and HTTP completions at concurrency 8); CPU is
   utime + stime of the router process from /proc. Figure: the median of the per-round ratios on/off of
   CPU-seconds per request (target: within 10 %).
2. Limit error: one tenant limited to --tpm generated tokens per minute, clients sending as fast as the
   limits let them (a refused client waits min(Retry-After, 50 ms) and tries again) for --window seconds.
   "Allowed" is what the limit's bucket allows in the window (its capacity, one minute's worth, plus the
   refill); the error is (tokens generated - allowed) / allowed. Cases: one router with the full limit;
   two routers each with --router-replicas 2, the clients spread over both; the same two, every client on
   one router (a gRPC client keeps one connection: the worst case of the per-replica share).

    .venv/bin/python bench/router_auth.py            # about 5 minutes on 2 cores
    .venv/bin/python bench/router_auth.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.request import urlopen

import grpc
from benchlib import cpu_seconds
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc

from grok_devcluster.local import free_port, parse_metrics, wait

TOKENS = 16  # generated per request by the fake upstream


# --- the fake upstream (run as `router_auth.py --upstream PORT`) ---

class FakeUpstream(pb_grpc.GenerationServiceServicer):
    async def Generate(self, request: pb.GenerateRequest,
                       context: grpc.aio.ServicerContext) -> pb.GenerateResponse:
        n = request.stopping.max_new_tokens or TOKENS
        return pb.GenerateResponse(text="x" * n, usage=pb.Usage(prompt_tokens=4, generated_tokens=n),
                                   finish_reason=pb.FINISH_REASON_LENGTH)

    async def GenerateStream(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> None:
        n = request.stopping.max_new_tokens or TOKENS
        for i in range(1, n + 1):
            await context.write(pb.GenerateResponse(
                text="x", usage=pb.Usage(prompt_tokens=4, generated_tokens=i),
                finish_reason=pb.FINISH_REASON_LENGTH if i == n else pb.FINISH_REASON_UNSPECIFIED))


async def serve_upstream(port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_GenerationServiceServicer_to_server(FakeUpstream(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# --- routers ---

class Router:
    def __init__(self, workdir: Path, upstream: int, *flags: str) -> None:
        self.port, self.http_port = free_port(), free_port()
        self.log = workdir / f"router-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "grok_router.main", "--host", "127.0.0.1", "--port", str(self.port),
             "--http-port", str(self.http_port), "--model-name", "tiny", "--hold-timeout-seconds", "0",
             "--replica", f"127.0.0.1:{upstream}", "--log-level", "WARNING", *flags],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT)

    def metrics(self) -> dict[str, float]:
        with urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=30) as answer:
            return parse_metrics(answer.read().decode())

    def wait(self) -> None:
        def started() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text()[-3000:])
            return self.metrics().get('grok_router_replicas{state="ready"}') == 1

        wait(started, 60, f"the router to start (log {self.log})", interval=0.1, transient=(OSError,))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def keys_folder(workdir: Path, tenants: int) -> tuple[Path, list[str]]:
    folder = workdir / "keys"
    folder.mkdir()
    keys = []
    for t in range(tenants):
        for k in range(2):
            key = f"bench-key-{t}-{k}-" + "k" * 32
            (folder / f"tenant-{t}.{k}").write_text(key + "\n")
            keys.append(key)
    return folder, keys


# --- load ---

async def grpc_calls(router: Router, count: int, concurrency: int, key: str | None) -> None:
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        queue = iter(range(count))

        async def worker() -> None:
            for _ in queue:
                request = pb.GenerateRequest(text="hello",
                                             stopping=pb.StoppingCriteria(max_new_tokens=TOKENS))
                async for _ in stub.GenerateStream(request, metadata=metadata, timeout=60):
                    pass

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def http_calls(router: Router, count: int, concurrency: int, key: str | None) -> None:
    import aiohttp

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = f"http://127.0.0.1:{router.http_port}/v1/completions"
    async with aiohttp.ClientSession() as session:
        queue = iter(range(count))

        async def worker() -> None:
            for _ in queue:
                async with session.post(url, json={"prompt": "hello", "max_tokens": TOKENS},
                                        headers=headers) as answer:
                    assert answer.status == 200, await answer.text()
                    await answer.read()

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def cpu_per_request(off: Router, on: Router, keys: list[str], args: argparse.Namespace) -> None:
    ratios = {"grpc": [], "http": []}
    per_request = {("grpc", "off"): [], ("grpc", "on"): [], ("http", "off"): [], ("http", "on"): []}
    for rnd in range(args.rounds):
        order = [(off, "off"), (on, "on")] if rnd % 2 == 0 else [(on, "on"), (off, "off")]
        for api, load in (("grpc", grpc_calls), ("http", http_calls)):
            got = {}
            for router, label in order:
                key = keys[rnd % len(keys)] if label == "on" else None
                before = cpu_seconds(router.proc.pid)
                await load(router, args.requests, 8, key)
                got[label] = (cpu_seconds(router.proc.pid) - before) / args.requests
                per_request[(api, label)].append(got[label])
            ratios[api].append(got["on"] / got["off"])
    print(f"\n1. router CPU per request, auth+limits on vs off ({args.rounds} paired rounds of "
          f"{args.requests} requests per protocol, concurrency 8, {TOKENS} tokens each)")
    for api in ("grpc", "http"):
        off_ms = statistics.median(per_request[(api, "off")]) * 1000
        on_ms = statistics.median(per_request[(api, "on")]) * 1000
        ratio = statistics.median(ratios[api])
        verdict = "met" if ratio <= 1.10 else "NOT met"
        print(f"   {api:5s} off {off_ms:6.3f} ms  on {on_ms:6.3f} ms  on/off median {ratio:5.3f} "
              f"(rounds: {', '.join(f'{r:.3f}' for r in ratios[api])})  target <= 1.10: {verdict}")


async def flood(routers: list[Router], key: str, window: float, clients: int) -> None:
    stop = time.monotonic() + window
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{r.port}") for r in routers]
    stubs = [pb_grpc.GenerationServiceStub(c) for c in channels]
    metadata = (("authorization", f"Bearer {key}"),)

    async def client(i: int) -> None:
        stub = stubs[i % len(stubs)]
        while time.monotonic() < stop:
            request = pb.GenerateRequest(text="hello", stopping=pb.StoppingCriteria(max_new_tokens=TOKENS))
            try:
                async for _ in stub.GenerateStream(request, metadata=metadata, timeout=60):
                    pass
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                trailers = dict(err.trailing_metadata() or ())
                await asyncio.sleep(min(int(trailers.get("retry-after-ms", "50")) / 1000, 0.05))

    try:
        await asyncio.gather(*(client(i) for i in range(clients)))
    finally:
        for c in channels:
            await c.close()


def generated(routers: list[Router], tenant: str) -> float:
    return sum(r.metrics().get(f'grok_router_tenant_generated_tokens_total{{tenant="{tenant}"}}', 0.0)
               for r in routers)


async def limit_error(workdir: Path, upstream: int, folder: Path, keys: list[str],
                      args: argparse.Namespace) -> None:
    limits = json.dumps({"tenants": {"tenant-0": {"generatedTokensPerMinute": args.tpm}}})
    allowed = args.tpm + args.tpm / 60 * args.window
    print(f"\n2. limit error: tenant-0 at {args.tpm:g} generated tokens/minute, {args.window:g} s of clients "
          f"sending {TOKENS}-token streams as fast as allowed; allowed = capacity + refill = {allowed:.0f}")
    cases = [("1 router, full limit", 1, 1, False),
             ("2 routers, --router-replicas 2, clients on both", 2, 2, False),
             ("2 routers, --router-replicas 2, every client on one", 2, 2, True)]
    for name, count, share, one in cases:
        routers = [Router(workdir, upstream, "--api-keys-dir", str(folder), "--tenant-limits", limits,
                          "--router-replicas", str(share)) for _ in range(count)]
        try:
            for r in routers:
                r.wait()
            await flood(routers[:1] if one else routers, keys[0], args.window, args.clients)
            got = generated(routers, "tenant-0")
        finally:
            for r in routers:
                r.stop()
        print(f"   {name:50s} generated {got:6.0f}  error {100 * (got - allowed) / allowed:+6.1f} %")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds and requests, a shorter window")
    p.add_argument("--rounds", type=int, default=8, help="paired rounds of the CPU comparison")
    p.add_argument("--requests", type=int, default=2000, help="requests per router, protocol and round")
    p.add_argument("--tpm", type=float, default=1200.0, help="the limited tenant's tokens a minute")
    p.add_argument("--window", type=float, default=15.0, help="seconds of the limit-error runs")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients of the limit-error runs")
    p.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.upstream:
        asyncio.run(serve_upstream(args.upstream))
        return
    if args.quick:
        args.rounds, args.requests, args.window = 4, 150, 8.0
    print(f"bench/router_auth.py on {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="router-auth-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        fake = subprocess.Popen([sys.executable, __file__, "--upstream", str(port)])
        folder, keys = keys_folder(workdir, 8)
        token = workdir / "token"
        token.write_text("upstream-token\n")
        high = json.dumps({"default": {"requestsPerSecond": 1e6, "generatedTokensPerMinute": 1e9,
                                       "concurrentRequests": 10_000}})
        off = Router(workdir, port)
        on = Router(workdir, port, "--api-keys-dir", str(folder), "--upstream-token-file", str(token),
                    "--tenant-limits", high)
        try:
            off.wait()
            on.wait()
            asyncio.run(cpu_per_request(off, on, keys, args))
            refused = sum(v for k, v in on.metrics().items()
                          if k.startswith("grok_router_tenant_refusals_total"))
            print(f"   (refusals by the limited router during the CPU runs: {refused:.0f})")
            off.stop()
            on.stop()
            asyncio.run(limit_error(workdir, port, folder, keys, args))
        finally:
            for r in (off, on):
                if r.proc.poll() is None:
                    r.stop()
            fake.terminate()
            fake.wait(30)


if __name__ == "__main__":
    main()
