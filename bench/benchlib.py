"""Small helpers the benchmarks share (each benchmark is a script; this sits beside them on sys.path)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")
CACHE = Path(os.environ.get("GROK_SERVE_CACHE", Path.home() / ".cache" / "grok-serve")) / "bench"


def pinned_environment(pins: Path, name: str) -> Path:
    """The python of an environment of a benchmark's own (made on its first run, keyed by its pin file): the
    pinned wheels installed --no-deps on top of the dependency environment's packages, never into the
    product's environment."""
    key = hashlib.sha256(pins.read_bytes() + sys.version.encode()).hexdigest()[:16]
    env = CACHE / "venvs" / f"{name}-{key}"
    python = env / "bin" / "python"
    if not (env / ".complete").exists():
        print(f"installing {pins.name} into {env} (first run only)", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(env)], check=True)
        site = Path(site_packages(python))
        ours = [p for p in sys.path if p.endswith("site-packages") and p != sysconfig.get_paths()["purelib"]]
        (site / "_grok_deps.pth").write_text("\n".join(ours) + "\n")
        subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                        "--disable-pip-version-check", "--no-deps", "-r", str(pins)], check=True)
        (env / ".complete").touch()
    return python


def site_packages(python: Path) -> str:
    """An environment's own site-packages folder (to import its pinned wheels in this process)."""
    return subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (noise on a shared machine moves wall time, less CPU time)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


async def stream_completion(session: Any, url: str, body: dict[str, Any]) -> tuple[float, int]:
    """One streamed OpenAI completion (POST `url`, an aiohttp session): seconds to its first text chunk, and
    the completion tokens its usage chunk reports."""
    ttft, tokens, _ = await stream_completion_gaps(session, url, body)
    return ttft, tokens


async def stream_completion_gaps(session: Any, url: str, body: dict[str, Any]
                                 ) -> tuple[float, int, list[float]]:
    """stream_completion, and the seconds between one text chunk and the next, as the client saw them."""
    start = last = time.perf_counter()
    ttft, tokens, gaps, chunks = 0.0, 0, [], 0
    async with session.post(url, json=body) as resp:
        resp.raise_for_status()
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("choices") and event["choices"][0].get("text"):
                now = time.perf_counter()
                if chunks:
                    gaps.append(now - last)
                else:
                    ttft = now - start
                last, chunks = now, chunks + 1
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    return ttft, tokens, gaps
