"""Where a replica's start goes, phase by phase, with cold caches beside warm ones (real grok-server, CPU).

For each checkpoint size, grok-server is started several ways, each from a fresh process as a pod would be,
each with its own HOME, TMPDIR and ports:

- eager:            --enforce-eager (what the tests and the tiny example run): nothing compiles;
- eager, worker process: the same with --engine-worker process (vLLM's CPU default: one process start more);
- eager, engine pre-started: eager, the engine core pre-started at exec (--engine-prestart, with its record
                    of the engine core's environment in a --compile-cache-dir written by an unmeasured start
                    first); the plain eager row has no --compile-cache-dir, so no pre-start;
- compile, cold:    compiling, with an empty compile-cache folder;
- compile, warm:    compiling, the same folder again (a second replica on the node);
- compile, warm, no shape warm-up: the same, warming up with the tiny request only.

Each row is the server's own report (GET /startup: exec -> Ready, by phase) and, from the client, launch ->
first token of a first request. Then the warm-up question: right after Ready, ten requests of a real shape
(--prompt-tokens, --new-tokens), one after the other: time to first token and mean inter-token latency of
the first beside the others', with the real-shape warm-up and without it.

    .venv/bin/python bench/cold_start.py [--sizes tiny small] [--rounds 1]
        [--ways eager "eager, engine pre-started"]  # a subset, in this order in each round

Wall times on a shared 2-core machine move with its load: the rows are paired (run one after the other) and
the compile hit/miss ratio is a ratio within one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from urllib.request import urlopen

import grpc
from benchlib import percentile
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc

from grok_devcluster.local import LocalServer, launch_server
from grok_server.checkpoints.tiny import make_tiny_checkpoint
from grok_server.server.startup import PHASES

BASE = ("--dtype", "float32", "--kv-cache-memory-bytes", str(256 * 1024 * 1024), "--max-model-len", "2048",
        "--max-num-seqs", "4")
WAYS = {
    "eager": ("--enforce-eager",),
    "eager, worker process": ("--enforce-eager", "--engine-worker", "process"),
    "eager, engine pre-started": ("--enforce-eager",),
    "compile, cold": (),
    "compile, warm": (),
    "compile, warm, no shape warm-up": ("--warmup-prompt-tokens", "0"),
}


def first_token(server: LocalServer, prompt: list[int], new_tokens: int) -> tuple[float, float]:
    """(time to first token, mean inter-token latency) of one streamed request, in seconds."""
    with grpc.insecure_channel(server.target) as ch:
        stub = pb_grpc.GenerationServiceStub(ch)
        req = pb.GenerateRequest(token_ids=pb.TokenIds(ids=prompt),
                                 sampling=pb.SamplingParams(temperature=0.0),
                                 stopping=pb.StoppingCriteria(max_new_tokens=new_tokens, ignore_eos=True))
        sent = time.monotonic()
        stamps = []
        tokens = 0
        for msg in stub.GenerateStream(req, timeout=600):
            stamps.append(time.monotonic())
            tokens += len(msg.token_ids)
    ttft = stamps[0] - sent
    itl = (stamps[-1] - stamps[0]) / max(1, tokens - 1)
    return ttft, itl


def start(model: Path, workdir: Path, flags: tuple[str, ...]) -> tuple[LocalServer, float, dict]:  # type: ignore[type-arg]
    launched = time.monotonic()
    server = launch_server(model, workdir, *BASE, *flags, env={"HOME": str(workdir / "home")})
    server.wait_ready(1800)
    first_token(server, [5, 6, 7, 8], 1)
    to_first_token = time.monotonic() - launched
    with urlopen(f"{server.http}/startup", timeout=10) as r:
        report = json.loads(r.read())
    return server, to_first_token, report


def run_size(size: str, rounds: int, prompt_tokens: int, new_tokens: int, root: Path,
             ways: list[str]) -> None:
    model = make_tiny_checkpoint(root / size / "model", size=size, naming="hpcai", seed=0)
    rows: list[tuple[str, float, dict]] = []  # type: ignore[type-arg]
    warm_servers: dict[str, LocalServer] = {}
    prestart_cache = root / size / "prestart-cache"
    if "eager, engine pre-started" in ways:  # writes the record of the engine core's environment
        server, _, _ = start(model, root / size / "prestart-record", (*WAYS["eager"], "--compile-cache-dir",
                                                                       str(prestart_cache)))
        server.stop()
    for r in range(rounds):
        cache = root / size / f"compile-cache-{r}"
        for way in ways:  # one after the other in each round: a load change hits every way alike
            flags = WAYS[way]
            extra = ("--compile-cache-dir", str(cache)) if way.startswith("compile") else ()
            if way == "eager, engine pre-started":
                extra = ("--compile-cache-dir", str(prestart_cache))
            folder = root / size / f"{way.replace(', ', '-').replace(' ', '-')}-{r}"  # no spaces: g++ args
            server, to_first, report = start(model, folder, (*flags, *extra))
            rows.append((way, to_first, report))
            if way.startswith("compile, warm") and r == rounds - 1:
                warm_servers[way] = server  # kept for the warm-up question (only one computes at a time)
            else:
                server.stop()
    print(f"\n## {size} ({sum(p.stat().st_size for p in model.iterdir()) / 1e6:.0f} MB checkpoint)")
    header = ["way", "to 1st token", "Ready", *PHASES, "compile cache", "engine pre-start"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for way, to_first, report in rows:
        phases = [f"{report['phases'][p]:.2f}" for p in PHASES]
        print(f"| {way} | {to_first:.1f} | {report['seconds']:.1f} | " + " | ".join(phases)
              + f" | {report['compile_cache']['state']} | {report.get('engine_prestart', '')} |")
    for way in ways:
        firsts = [to_first for w, to_first, _ in rows if w == way]
        if len(firsts) > 1:
            print(f"  {way}: to 1st token median {statistics.median(firsts):.1f} s of {len(firsts)}")
    cold = [rep["phases"]["compile"] for way, _, rep in rows if way == "compile, cold"]
    warm = [rep["phases"]["compile"] for way, _, rep in rows if way == "compile, warm"]
    if cold and warm and statistics.median(cold) > 0:
        hit, miss = statistics.median(warm), statistics.median(cold)
        print(f"\ncompile on a hit / on a miss: {hit:.2f} s / {miss:.2f} s = {hit / miss:.1%} "
              f"(median of {len(cold)})")
    if not warm_servers:
        return
    try:
        # A prompt of its own for each request (from the first token on): no prefix-cache hits.
        prompts = [[(37 * i + 11 + 97 * k) % 1000 + 3 for i in range(prompt_tokens)] for k in range(10)]
        print(f"\nwarm-up question ({prompt_tokens}-token prompts, {new_tokens} new tokens, one at a time, "
              "right after Ready):")
        for way, server in warm_servers.items():
            runs = [first_token(server, prompt, new_tokens) for prompt in prompts]
            rest = runs[1:]
            print(f"  {way}: request 1 TTFT {runs[0][0] * 1000:.0f} ms, ITL {runs[0][1] * 1000:.2f} ms; "
                  f"requests 2-10 TTFT p50 {percentile([t for t, _ in rest], 50) * 1000:.0f} ms, "
                  f"ITL p50 {percentile([i for _, i in rest], 50) * 1000:.2f} ms")
    finally:
        for server in warm_servers.values():
            server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=["tiny", "small"])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--prompt-tokens", type=int, default=1000)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--ways", nargs="+", default=list(WAYS), choices=list(WAYS),
                   help="which starts to run, in this order in each round")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="grok-cold-start-") as tmp:
        for size in args.sizes:
            run_size(size, args.rounds, args.prompt_tokens, args.new_tokens, Path(tmp), args.ways)


if __name__ == "__main__":
    main()
