#!/usr/bin/env python
"""Closed-loop load on grok-server and its peers, same tiny model and engine settings, one after another.

Systems:
  grok       this server (grok.serving.v1 GenerateStream, token-id prompts, token_ids_only)
  vllm-grpc  vLLM's own gRPC server (vllm.entrypoints.launchers.grpc_server + smg-grpc-servicer), run from a
             separate virtualenv this script creates under ~/.cache/grok-serve/bench/ (never in .venv: its
             vllm.general_plugins entry point would load into every vLLM process of that environment)
  openai     vLLM's OpenAI HTTP server, /v1/completions with stream=true
  inprocess  AsyncLLM driven in-process, no network: the limit

CPU placement: the same for every system. On the CPU backend vLLM binds the engine worker to some cores; each
system's other processes (frontend, engine core) and this script's load generator are moved to the remaining
cores (what grok-server does by itself with --cpu-affinity auto, and what a deployment whose clients run on
other machines gets).

Output: token ids. The gRPC systems are asked for token ids only (vLLM's gRPC server never detokenizes
without stop strings; grok-server does not when the request sets token_ids_only) and the in-process engine
runs with detokenize=False; the OpenAI API always returns text, so that server also detokenizes.

For each concurrency C, C workers each send requests back to back for --seconds (then finish the request in
hand; at least one each), with a fixed prompt of --prompt-tokens token ids and exactly --output-tokens greedy
tokens with ignore_eos. Systems run alternately
within each round; the table shows medians over --rounds. Prints output tokens/s, time-to-first-token
p50/p99, the ratios, and the targets: grok >= vllm-grpc and >= openai at every C, grok >= 0.95 x inprocess
at C=32, TTFT p50 within 5 ms of inprocess.

    .venv/bin/python bench/server_vs_peers.py                      # everything (first run builds the venv)
    .venv/bin/python bench/server_vs_peers.py --systems grok,inprocess --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import percentile, stream_completion

from grok_devcluster.local import engine_env, free_port, wait
from grok_server.server import placement

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("GROK_SERVE_CACHE", Path.home() / ".cache" / "grok-serve")) / "bench"
SMG_PACKAGES = ("smg-grpc-servicer==0.14.1", "smg-grpc-proto==0.4.28")
SYSTEMS = ("grok", "vllm-grpc", "openai", "inprocess")
START_TIMEOUT = 420.0


# ---- measurement ---------------------------------------------------------------------------------


@dataclass
class Sample:
    ttft: float
    tokens: int


@dataclass
class Result:
    system: str
    concurrency: int
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    errors: int = 0
    round: int = 0


async def closed_loop(
    one: Callable[[int], Awaitable[Sample]], concurrency: int, seconds: float
) -> tuple[list[Sample], float, int]:
    samples: list[Sample] = []
    errors = 0

    async def worker(w: int) -> None:
        nonlocal errors
        for i in itertools.count():
            if i and time.perf_counter() >= deadline:
                break
            try:
                samples.append(await one(w * 1000 + i))
            except Exception as e:  # reported, not fatal: the table shows the count
                errors += 1
                if errors <= 3:
                    print(f"    request failed: {type(e).__name__}: {e}", file=sys.stderr)

    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return samples, time.perf_counter() - start, errors


def summarize(system: str, concurrency: int, samples: list[Sample], wall: float, errors: int) -> Result:
    ttfts = [s.ttft * 1000 for s in samples]
    return Result(
        system,
        concurrency,
        sum(s.tokens for s in samples) / wall,
        percentile(ttfts, 50),
        percentile(ttfts, 99),
        errors,
    )


# ---- clients -------------------------------------------------------------------------------------


@dataclass
class Load:
    prompt: list[int]
    output_tokens: int


class GrokClient:
    def __init__(self, target: str, load: Load) -> None:
        import grpc
        from grok.serving.v1 import generation_pb2 as pb
        from grok.serving.v1 import generation_pb2_grpc as pb_grpc

        self._channel = grpc.aio.insecure_channel(target)
        self._stub = pb_grpc.GenerationServiceStub(self._channel)
        self._request = pb.GenerateRequest(
            token_ids=pb.TokenIds(ids=load.prompt),
            sampling=pb.SamplingParams(temperature=0.0),
            stopping=pb.StoppingCriteria(max_new_tokens=load.output_tokens, ignore_eos=True),
            token_ids_only=True,
        )

    async def one(self, i: int) -> Sample:
        start = time.perf_counter()
        ttft, tokens = 0.0, 0
        async for part in self._stub.GenerateStream(self._request, timeout=600):
            if part.token_ids and not tokens:
                ttft = time.perf_counter() - start
            tokens += len(part.token_ids)
        return Sample(ttft, tokens)

    async def close(self) -> None:
        await self._channel.close()


class VllmGrpcClient:
    def __init__(self, target: str, load: Load, smg_site: Path) -> None:
        import grpc

        sys.path.append(str(smg_site))  # the proto package only; nothing of the servicer runs here
        from smg_grpc_proto import vllm_engine_pb2 as pb
        from smg_grpc_proto import vllm_engine_pb2_grpc as pb_grpc

        self._pb = pb
        self._channel = grpc.aio.insecure_channel(target)
        self._stub = pb_grpc.VllmEngineStub(self._channel)
        self._load = load

    async def one(self, i: int) -> Sample:
        pb = self._pb
        req = pb.GenerateRequest(
            request_id=f"bench-{i}-{time.monotonic_ns()}",
            tokenized=pb.TokenizedInput(input_ids=self._load.prompt),
            sampling_params=pb.SamplingParams(
                temperature=0.0,
                top_p=1.0,
                top_k=0,
                repetition_penalty=1.0,
                max_tokens=self._load.output_tokens,
                ignore_eos=True,
            ),
            stream=True,
        )
        start = time.perf_counter()
        ttft, tokens = 0.0, 0
        async for resp in self._stub.Generate(req, timeout=600):
            if resp.HasField("chunk"):
                new = len(resp.chunk.token_ids)
                if new and not tokens:
                    ttft = time.perf_counter() - start
                tokens += new
        return Sample(ttft, tokens)

    async def close(self) -> None:
        await self._channel.close()


class OpenAIClient:
    def __init__(self, url: str, model: str, load: Load) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self._url = f"{url}/v1/completions"
        self._body = {
            "model": model,
            "prompt": load.prompt,
            "max_tokens": load.output_tokens,
            "temperature": 0.0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    async def one(self, i: int) -> Sample:
        return Sample(*await stream_completion(self._session, self._url, self._body))

    async def close(self) -> None:
        await self._session.close()


# ---- the in-process engine (a subprocess of this script: the CPU backend spawns workers) ------------


def inprocess_worker(args: argparse.Namespace) -> None:
    """Reads 'concurrency seconds' lines on stdin, answers one JSON Result per line."""
    # vLLM logs to stdout: keep the original stdout for answers only, send everything else to stderr.
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.inputs import tokens_input
    from vllm.sampling_params import RequestOutputKind, SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

    load = Load(list(json.loads(args.prompt_json)), args.output_tokens)

    async def main() -> None:
        engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**json.loads(args.engine_json)))
        params = SamplingParams(
            max_tokens=load.output_tokens,
            temperature=0.0,
            ignore_eos=True,
            output_kind=RequestOutputKind.DELTA,
            detokenize=False,  # token ids out, like the gRPC systems
        )

        async def one(i: int) -> Sample:
            start = time.perf_counter()
            ttft, tokens = 0.0, 0
            rid = f"bench-{i}-{time.monotonic_ns()}"
            async for out in engine.generate(tokens_input(load.prompt), params, rid):
                new = len(out.outputs[0].token_ids)
                if new and not tokens:
                    ttft = time.perf_counter() - start
                tokens += new
            return Sample(ttft, tokens)

        loop = asyncio.get_running_loop()
        print("ready", file=answers)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line.strip():
                break
            c, seconds = int(line.split()[0]), float(line.split()[1])
            samples, wall, errors = await closed_loop(one, c, seconds)
            print(json.dumps(summarize("inprocess", c, samples, wall, errors).__dict__), file=answers)
        engine.shutdown()

    asyncio.run(main())


# ---- processes -----------------------------------------------------------------------------------


def engine_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--enforce-eager", "--kv-cache-memory-bytes", str(args.kv_cache_bytes), "--dtype", args.dtype]
    if args.max_num_seqs:
        flags += ["--max-num-seqs", str(args.max_num_seqs)]
    return flags


def engine_kwargs(args: argparse.Namespace, model: Path) -> dict[str, object]:
    kw: dict[str, object] = {
        "model": str(model),
        "enforce_eager": True,
        "dtype": args.dtype,
        "kv_cache_memory_bytes": args.kv_cache_bytes,
        "disable_log_stats": True,
    }
    if args.max_num_seqs:
        kw["max_num_seqs"] = args.max_num_seqs
    return kw


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    address: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def pause(self) -> None:
        """SIGSTOP to the whole process group: an idle engine still polls, a tax on whichever system runs."""
        os.killpg(self.popen.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.popen.pid, signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL; then anything left in its process group (engine processes) goes too."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            self.resume()
        if self.popen.stdin is not None:
            with contextlib.suppress(Exception):
                self.popen.stdin.close()  # the in-process worker's cue to shut its engine down
        try:
            self.popen.wait(timeout=30 if self.popen.stdin is not None else 0.01)
        except subprocess.TimeoutExpired:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # spawned as the leader of its own process group


def spawn(
    name: str,
    cmd: list[str],
    workdir: Path,
    env_extra: dict[str, str] | None = None,
    stdin: int | None = None,
    stdout: int | None = None,
) -> Proc:
    workdir.mkdir(parents=True, exist_ok=True)
    env = engine_env(workdir, env_extra)
    log = workdir / f"{name}.log"
    with log.open("wb") as f:
        popen = subprocess.Popen(
            cmd,
            stdout=stdout if stdout is not None else f,
            stderr=f,
            stdin=stdin,
            env=env,
            cwd=workdir,
            # Its own process group (so that stop() reaches the engine processes) but this session: with the
            # kernel's autogroup scheduling each session is a scheduling group of its own, and a server in
            # another session than this client intermittently starves the client on a small machine (its
            # socket held 300+ ms of tokens unread), which the in-process baseline, one session, never sees.
            process_group=0,
        )
    return Proc(name, popen, log)


def wait_port(proc: Proc, port: int, check: Callable[[], bool]) -> None:
    def up() -> bool:
        if proc.popen.poll() is not None:
            raise RuntimeError(
                f"{proc.name} exited with {proc.popen.returncode}; log {proc.log}:\n"
                + proc.log.read_text(errors="replace")[-4000:]
            )
        with contextlib.suppress(Exception):  # any failure of the check is "not up yet"; exiting is not
            return check()
        return False

    wait(up, START_TIMEOUT, f"{proc.name} to come up (log {proc.log})", interval=0.5)


_HEALTH_CHECK = """
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
with grpc.insecure_channel("127.0.0.1:" + sys.argv[1]) as ch:
    resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
sys.exit(0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 1)
"""


def grpc_serving(port: int) -> bool:
    # In a child process: this process drives the load with grpc.aio, and once the synchronous gRPC API has
    # run in a process, grpc.aio channels there intermittently hold streamed messages back (seen: ~290 ms
    # time to first token on a fraction of channels, for every system).
    return (
        subprocess.run(
            [sys.executable, "-c", _HEALTH_CHECK, str(port)], capture_output=True, timeout=30, check=False
        ).returncode
        == 0
    )


def http_ok(url: str) -> bool:
    from urllib.request import urlopen

    with urlopen(url, timeout=2) as r:
        return r.status == 200


def smg_venv() -> tuple[Path, Path]:
    """A virtualenv with smg-grpc-servicer on top of the repository's environment (made once, cached)."""
    root = CACHE / ("smg-venv-" + "-".join(p.split("==")[1] for p in SMG_PACKAGES))
    py = root / "bin" / "python"
    site = root / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    if (root / ".complete").exists():
        return py, site
    shutil.rmtree(root, ignore_errors=True)
    print(f"creating {root} (first run only)", file=sys.stderr)
    venv.EnvBuilder(with_pip=True).create(root)
    repo_site = next(p for p in sys.path if p.endswith("site-packages") and str(REPO / ".venv") in p)
    # See the repository's environment (vLLM, grpc, the Grok-1 plugin) with its own .pth files processed.
    (site / "_grok_repo.pth").write_text(f"import site; site.addsitedir({repo_site!r})\n")
    subprocess.run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            *SMG_PACKAGES,
        ],
        check=True,
    )
    (root / ".complete").touch()
    return py, site


def start_system(name: str, args: argparse.Namespace, model: Path, load: Load, workdir: Path) -> Proc:
    """Starts one system and waits until it serves; a system that fails to come up is stopped."""
    py = sys.executable
    port = free_port()
    # What every server is told: the model, where to listen, and the same engine settings.
    serve = ["--model", str(model), "--host", "127.0.0.1", "--port", str(port), *engine_flags(args)]
    p: Proc | None = None
    try:
        if name == "grok":
            p = spawn(
                name,
                [
                    py,
                    "-m",
                    "grok_server.server.main",
                    *serve,
                    "--metrics-port",
                    str(free_port()),
                    "--max-concurrent-requests",
                    "4096",
                ],
                workdir / name,
            )
            wait_port(p, port, lambda port=port: grpc_serving(port))
            p.address = f"127.0.0.1:{port}"
        elif name == "vllm-grpc":
            smg_py, smg_site = smg_venv()
            p = spawn(
                name,
                [
                    str(smg_py),
                    "-m",
                    "vllm.entrypoints.launchers.grpc_server",
                    *serve,
                ],
                workdir / name,
                {"SMG_VLLM_SERVICER_KV_EVENTS": "0"},
            )
            wait_port(p, port, lambda port=port: grpc_serving(port))
            p.address = f"127.0.0.1:{port}"
            p.extra["site"] = str(smg_site)
        elif name == "openai":
            p = spawn(
                name,
                [
                    py,
                    "-m",
                    "vllm.entrypoints.openai.api_server",
                    *serve,
                    "--disable-uvicorn-access-log",
                ],
                workdir / name,
            )
            wait_port(p, port, lambda port=port: http_ok(f"http://127.0.0.1:{port}/health"))
            p.address = f"http://127.0.0.1:{port}"
        elif name == "inprocess":
            p = spawn(
                name,
                [
                    py,
                    str(Path(__file__).resolve()),
                    "--inprocess-worker",
                    "--engine-json",
                    json.dumps(engine_kwargs(args, model)),
                    "--prompt-json",
                    json.dumps(load.prompt),
                    "--output-tokens",
                    str(load.output_tokens),
                ],
                workdir / name,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            assert p.popen.stdout is not None
            line = p.popen.stdout.readline().decode().strip()
            if line != "ready":
                raise RuntimeError(
                    f"inprocess worker failed; log {p.log}:\n" + p.log.read_text(errors="replace")[-4000:]
                )
        else:
            raise SystemExit(f"unknown system {name!r}; choose from {', '.join(SYSTEMS)}")
        print(f"  {name} up", file=sys.stderr)
        return p
    except BaseException:
        if p is not None:
            p.stop()
        raise


async def measure(name: str, proc: Proc, load: Load, model: Path, c: int, seconds: float) -> Result:
    if name == "inprocess":
        assert proc.popen.stdin is not None and proc.popen.stdout is not None
        proc.popen.stdin.write(f"{c} {seconds}\n".encode())
        proc.popen.stdin.flush()
        line = await asyncio.get_running_loop().run_in_executor(None, proc.popen.stdout.readline)
        return Result(**json.loads(line))
    client: GrokClient | VllmGrpcClient | OpenAIClient
    if name == "grok":
        client = GrokClient(proc.address, load)
    elif name == "vllm-grpc":
        client = VllmGrpcClient(proc.address, load, Path(proc.extra["site"]))
    else:
        client = OpenAIClient(proc.address, str(model), load)
    try:
        samples, wall, errors = await closed_loop(client.one, c, seconds)
    finally:
        await client.close()
    return summarize(name, c, samples, wall, errors)


# ---- report --------------------------------------------------------------------------------------


def report(results: list[Result], systems: list[str], concurrencies: list[int]) -> str:
    def med(system: str, c: int, attr: str) -> float:
        values = [getattr(r, attr) for r in results if r.system == system and r.concurrency == c]
        return statistics.median(values) if values else float("nan")

    lines = [
        "| C | system | output tok/s | TTFT p50 ms | TTFT p99 ms | errors |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for c in concurrencies:
        for s in systems:
            errors = sum(r.errors for r in results if r.system == s and r.concurrency == c)
            lines.append(
                f"| {c} | {s} | {med(s, c, 'tokens_per_s'):.0f} | {med(s, c, 'ttft_p50_ms'):.1f} | "
                f"{med(s, c, 'ttft_p99_ms'):.1f} | {errors} |"
            )
    def paired(peer: str, c: int, value: Callable[[Result, Result], float]) -> list[float]:
        """Grok compared with `peer` in each round: measured within a minute of each other, so slow drift in
        the machine's speed cancels out of each pair (the median of these is the figure judged)."""
        pairs = []
        for n in sorted({r.round for r in results}):
            mine = [r for r in results if r.round == n and r.concurrency == c and r.system == "grok"]
            theirs = [r for r in results if r.round == n and r.concurrency == c and r.system == peer]
            if mine and theirs:
                pairs.append(value(mine[0], theirs[0]))
        return pairs

    def tps_ratio(a: Result, b: Result) -> float:
        return a.tokens_per_s / b.tokens_per_s

    def ttft_gap(a: Result, b: Result) -> float:
        return a.ttft_p50_ms - b.ttft_p50_ms

    def row(c: int, what: str, pairs: list[float], fmt: str, target: str, met: bool | None) -> str:
        median = statistics.median(pairs) if pairs else float("nan")
        each = " ".join(format(p, fmt) for p in pairs)
        verdict = "" if met is None else ("yes" if met else "NO")
        return f"| {c} | {what} | {format(median, fmt)} | {each} | {target} | {verdict} |"

    if "grok" in systems:
        lines += [
            "",
            "Ratios: the median over rounds of the same round's pair (each round's pair after it).",
            "",
            "| C | ratio | median | per round | target | met |",
            "|---|---|---:|---|---|---|",
        ]
        for c in concurrencies:
            for peer in ("vllm-grpc", "openai"):
                if peer in systems:
                    pairs = paired(peer, c, tps_ratio)
                    met = bool(pairs) and statistics.median(pairs) >= 1.0
                    lines.append(row(c, f"grok / {peer} tok/s", pairs, ".3f", ">= 1.000", met))
            if "inprocess" in systems:
                pairs = paired("inprocess", c, tps_ratio)
                if c == 32:
                    met = bool(pairs) and statistics.median(pairs) >= 0.95
                    lines.append(row(c, "grok / inprocess tok/s", pairs, ".3f", ">= 0.950", met))
                else:
                    lines.append(row(c, "grok / inprocess tok/s", pairs, ".3f", "-", None))
                gaps = paired("inprocess", c, ttft_gap)
                met = bool(gaps) and statistics.median(gaps) <= 5.0
                lines.append(row(c, "grok - inprocess TTFT p50 ms", gaps, "+.1f", "<= 5 ms", met))
    return "\n".join(lines)


def tiny_model() -> Path:
    out = CACHE / "models" / "grok1-tiny-hpcai-seed0"
    if not (out / "config.json").exists():
        from grok_server.checkpoints.tiny import make_tiny_checkpoint

        shutil.rmtree(out, ignore_errors=True)
        make_tiny_checkpoint(out, size="tiny", naming="hpcai", seed=0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="checkpoint (default: the tiny Grok-1 one, made and cached)")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--output-tokens", type=int, default=128)
    p.add_argument("--seconds", type=float, default=10.0, help="length of each measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--kv-cache-bytes", type=int, default=512 * 1024 * 1024)
    p.add_argument("--max-num-seqs", type=int, default=0)
    p.add_argument("--json-out", type=Path, help="also write every round's results here")
    p.add_argument("--inprocess-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--engine-json", help=argparse.SUPPRESS)
    p.add_argument("--prompt-json", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.inprocess_worker:
        inprocess_worker(args)
        return
    # Run the clean-up below when killed too: the systems wait paused (SIGSTOP) and would be left behind.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = args.model or tiny_model()
    vocab = int(json.loads((model / "config.json").read_text())["vocab_size"])
    # A fixed prompt of token ids (the same bytes for every system; no tokenizer differences).
    load = Load([(7 + 131 * i) % (vocab - 10) + 5 for i in range(args.prompt_tokens)], args.output_tokens)
    workdir = Path(tempfile.mkdtemp(prefix="grok-bench-"))
    print(f"model {model}; logs in {workdir}", file=sys.stderr)
    results: list[Result] = []

    # All systems up, but only the one being measured runs: the others are paused (SIGSTOP), since an idle
    # engine still polls. Systems alternate at every concurrency of every round, so that drift in the
    # machine's speed (minutes-long swings of 30% are common on shared small VMs) spreads over all of them.
    procs: dict[str, Proc] = {}
    all_cpus = os.sched_getaffinity(0)
    placements: set[tuple[frozenset[int], frozenset[int]]] = set()
    try:
        for name in args.systems:
            procs[name] = start_system(name, args, model, load, workdir)
            # The same CPU placement for every system (grok-server does this itself, --cpu-affinity auto):
            # the engine worker alone on the cores vLLM bound it to; the frontend, the engine core and this
            # load generator on the others, as when the clients run on other machines.
            placed = placement.keep_off_worker_cpus(procs[name].popen.pid, all_cpus)
            if placed is not None:
                placements.add((frozenset(placed.worker_cpus), frozenset(placed.frontend_cpus)))
            procs[name].pause()
        if len(placements) == 1:
            # Only now: the systems started above inherit this process's affinity, and vLLM binds a worker to
            # cores among those it inherits.
            workers, rest = placements.pop()
            placement.pin_threads(os.getpid(), set(rest))
            print(f"CPU placement: engine workers on CPUs {sorted(workers)}; frontends, engine cores and the "
                  f"load generator on {sorted(rest)}", file=sys.stderr)
        else:
            print(f"CPU placement left to the kernel (engine workers bound: {placements or 'none'})",
                  file=sys.stderr)

        async def one_measurement(name: str, c: int, seconds: float) -> Result:
            procs[name].resume()
            try:
                await asyncio.sleep(0.5)
                return await measure(name, procs[name], load, model, c, seconds)
            finally:
                procs[name].pause()

        async def run() -> None:
            for name in args.systems:  # warm-up: first requests pay one-time costs in every system
                await one_measurement(name, 4, 1.0)
            for r in range(args.rounds):
                order = args.systems[r % len(args.systems) :] + args.systems[: r % len(args.systems)]
                for c in concurrencies:
                    for name in order:
                        res = await one_measurement(name, c, args.seconds)
                        res.round = r + 1
                        results.append(res)
                        print(
                            f"  round {r + 1} C={c:<3} {name:<10} {res.tokens_per_s:8.0f} tok/s  "
                            f"TTFT p50 {res.ttft_p50_ms:6.1f} ms  p99 {res.ttft_p99_ms:6.1f} ms"
                            + (f"  errors {res.errors}" if res.errors else ""),
                            file=sys.stderr,
                        )

        asyncio.run(run())
    finally:
        for proc in procs.values():
            proc.stop()
    if args.json_out:
        args.json_out.write_text(json.dumps([r.__dict__ for r in results], indent=1))
    print(
        f"\nprompt {args.prompt_tokens} tokens, output {args.output_tokens} tokens (greedy, ignore_eos), "
        f"{args.seconds:g} s closed loop per measurement, "
        f"median of {args.rounds} rounds, "
        f"dtype {args.dtype}, enforce_eager, model {model.name}\n"
    )
    print(report(results, args.systems, concurrencies))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
