#!/usr/bin/env python
"""One grok-router process's ceiling: the output tokens/s it forwards while the latency it adds to each
streamed message stays under 5 ms at the 99th percentile.

No CPU engine here streams tokens at the rate of a Grok-1 replica on 8 GPUs, so the replica is a token
source: a gRPC GenerationService (in this script) that answers GenerateStream with `max_new_tokens` tokens,
`--tokens-per-message` to a message, at the pace that gives the offered rate. The router is the real one.
Each message carries its send time (CLOCK_MONOTONIC, one clock for every process on this machine) in
`request_id`; the client takes it off its arrival time. Every rate runs twice, straight to the source and
through the router; the router's addition is the difference of the two, at p50 and p99.

Placement (2 cores): the router alone on core 0; the token source and the client on core 1. A rate the
source and client cannot keep up with shows as achieved < offered: the figure above it is then a floor.

    .venv/bin/python bench/router_ceiling.py            # about 5 minutes
    .venv/bin/python bench/router_ceiling.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from benchlib import cpu_seconds, percentile
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc
from router import header, wait_http
from router_vs_peers import on_core

from grok_devcluster.local import free_port, wait
from grok_rpc.grpc_setup import SERVICE_NAME

ROUTER_CORE, LOAD_CORE = 0, 1
STREAMS = 32
TOKENS_PER_REQUEST = 256
ADDED_P99_LIMIT_MS = 5.0


# ---- the token source ---------------------------------------------------------------------------


async def serve_tokens(port: int, tokens_per_message: int, interval: float) -> None:
    async def generate_stream(request: pb.GenerateRequest, _: grpc.aio.ServicerContext):
        total = request.stopping.max_new_tokens
        sent = 0
        next_at = time.monotonic()
        while sent < total:
            n = min(tokens_per_message, total - sent)
            sent += n
            yield pb.GenerateResponse(
                request_id=str(time.monotonic_ns()), text=" tok" * n, token_ids=[7] * n,
                finish_reason=pb.FINISH_REASON_LENGTH if sent == total else pb.FINISH_REASON_UNSPECIFIED,
                usage=pb.Usage(prompt_tokens=8, generated_tokens=sent))
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    handlers = {"GenerateStream": grpc.unary_stream_rpc_method_handler(
        generate_stream, pb.GenerateRequest.FromString, pb.GenerateResponse.SerializeToString)}
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# ---- the client ---------------------------------------------------------------------------------


@dataclass
class Point:
    achieved: float  # output tokens/s the client received
    delays: list[float]  # seconds from the source's send to the client's receipt, per message


async def drive(target: str, requests: int) -> Point:
    request = pb.GenerateRequest(text="x", stopping=pb.StoppingCriteria(max_new_tokens=TOKENS_PER_REQUEST))
    delays: list[float] = []
    tokens = 0
    left = [requests]
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)

        async def worker() -> None:
            nonlocal tokens
            while left[0] > 0:
                left[0] -= 1
                async for message in stub.GenerateStream(request, timeout=600):
                    delays.append((time.monotonic_ns() - int(message.request_id)) / 1e9)
                    tokens += len(message.token_ids)

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(STREAMS)))
        return Point(tokens / (time.monotonic() - start), delays)


# ---- processes ----------------------------------------------------------------------------------


def start(cmd: list[str], core: int, log: Path) -> subprocess.Popen[bytes]:
    with on_core(core), log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, process_group=0)


def stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_grpc(target: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        with grpc.insecure_channel(target) as channel:
            grpc.channel_ready_future(channel).result(timeout=1)  # waits itself: no pause between tries
        return True

    wait(listening, 60, f"{target} to listen (log {log})", interval=0, transient=(grpc.FutureTimeoutError,))


def measure(rate: float, tokens_per_message: int, args: argparse.Namespace, workdir: Path) -> list[str]:
    """Offered `rate` tokens/s over STREAMS streams: direct, then through a fresh router."""
    interval = tokens_per_message * STREAMS / rate
    requests = max(STREAMS, math.ceil(rate * args.seconds / TOKENS_PER_REQUEST))
    source_port, router_port, http_port = free_port(), free_port(), free_port()
    log = workdir / f"source-{rate:.0f}-{tokens_per_message}.log"
    source = start([sys.executable, __file__, "--serve", str(source_port), str(tokens_per_message),
                    str(interval)], LOAD_CORE, log)
    rlog = workdir / f"router-{rate:.0f}-{tokens_per_message}.log"
    router = start([sys.executable, "-m", "grok_router.main", "--host", "127.0.0.1",
                    "--port", str(router_port), "--http-port", str(http_port), "--model-name", "tiny",
                    "--log-level", "WARNING",
                    "--replica", f"127.0.0.1:{source_port}"], ROUTER_CORE, rlog)
    try:
        wait_grpc(f"127.0.0.1:{source_port}", source, log)
        wait_http(router, f"http://127.0.0.1:{http_port}/readyz", rlog, "grok-router")
        with on_core(LOAD_CORE):
            asyncio.run(drive(f"127.0.0.1:{router_port}", STREAMS))  # warm-up
            direct = asyncio.run(drive(f"127.0.0.1:{source_port}", requests))
            before, began = cpu_seconds(router.pid), time.monotonic()
            routed = asyncio.run(drive(f"127.0.0.1:{router_port}", requests))
            busy = (cpu_seconds(router.pid) - before) / (time.monotonic() - began)
    finally:
        stop(router)
        stop(source)
    added = {q: 1000 * (percentile(routed.delays, q) - percentile(direct.delays, q)) for q in (50, 99)}
    ok = added[99] <= ADDED_P99_LIMIT_MS
    return [f"{rate:>8.0f}", f"{tokens_per_message:>3}", f"{direct.achieved:>8.0f}",
            f"{routed.achieved:>8.0f}", f"{100 * busy:5.0f} %", f"{added[50]:+7.2f}", f"{added[99]:+7.2f}",
            "yes" if ok else "no"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer rates, shorter runs")
    p.add_argument("--serve", nargs=3, metavar=("PORT", "TOKENS_PER_MESSAGE", "INTERVAL"),
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        port, per_message, interval = args.serve
        asyncio.run(serve_tokens(int(port), int(per_message), float(interval)))
        return
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs 2 usable cores (the router on one, the token source and client on the other)")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    args.seconds = 3.0 if args.quick else 6.0
    ladders = {1: (2000, 4000, 8000, 12000, 16000), 16: (16000, 32000, 64000, 96000, 128000)}
    if args.quick:
        ladders = {1: (2000, 8000), 16: (8000, 32000)}
    workdir = Path(tempfile.mkdtemp(prefix="grok-bench-ceiling-"))
    began = time.monotonic()
    rows = []
    for per_message, rates in ladders.items():
        for rate in rates:
            rows.append(measure(rate, per_message, args, workdir))
            print("   " + " | ".join(rows[-1]), file=sys.stderr, flush=True)
    print()
    print(f"bench/router_ceiling.py{' --quick' if args.quick else ''}, "
          f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(header())
    print(f"{STREAMS} streams of {TOKENS_PER_REQUEST} tokens; router alone on core {ROUTER_CORE}, token "
          f"source and client on core {LOAD_CORE}; added latency = through the router minus straight to the "
          "source")
    print("| offered tok/s | tokens per message | direct tok/s | via router tok/s | router CPU "
          f"| added p50 ms | added p99 ms | p99 added <= {ADDED_P99_LIMIT_MS:g} ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    for per_message in ladders:
        fine = [float(r[0]) for r in rows if int(r[1]) == per_message and r[-1] == "yes"]
        print(f"ceiling at {per_message} token(s) per message: "
              + (f"{max(fine):.0f} tok/s offered (the highest rate tried that stayed under the bound)"
                 if fine else "below the lowest rate tried"))
    print(f"(run time {(time.monotonic() - began) / 60:.1f} min; logs in {workdir})")


if __name__ == "__main__":
    main()
