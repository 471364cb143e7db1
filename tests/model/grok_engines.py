"""Running vLLM engines for the model tests: each engine is a subprocess (see engine_job.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ENGINE_JOB = Path(__file__).with_name("engine_job.py")
ENGINE_TIMEOUT_S = 600

# Token-id prompts (no pad/bos/eos ids): short, medium and one long enough for several KV-cache blocks.
PROMPTS: list[list[int]] = [
    [5, 17, 300, 42, 999, 12, 77, 8, 512, 3, 64, 128, 256, 700, 701, 702],
    [900, 14, 15, 16, 23, 88, 1000, 400],
    [3, 4],
    [(37 * i + 11) % 1021 + 3 for i in range(40)],
]
MAX_TOKENS = 8


def run_engine(
    workdir: Path,
    model: Path,
    *,
    tensor_parallel_size: int = 1,
    dtype: str = "float32",
    prompts: list[list[int]] = PROMPTS,
    max_tokens: int = MAX_TOKENS,
    engine: dict | None = None,
) -> dict[str, np.ndarray]:
    """Start an engine on `model`, run greedy generation with full log-probs, return engine_job's arrays."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec = {
        "model": str(model),
        "prompts": prompts,
        "max_tokens": max_tokens,
        "dtype": dtype,
        "tensor_parallel_size": tensor_parallel_size,
        "engine": engine or {},
    }
    spec_path, out_path, log_path = workdir / "spec.json", workdir / "out.npz", workdir / "engine.log"
    spec_path.write_text(json.dumps(spec))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TMPDIR": str(workdir),  # ZeroMQ socket files and compile caches stay in the run's folder
        "VLLM_CACHE_ROOT": str(workdir / "vllm-cache"),
    }
    if tensor_parallel_size > 1:
        # One core per rank: a single-NUMA machine cannot bind threads otherwise.
        env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(i) for i in range(tensor_parallel_size))
    with log_path.open("w") as log:
        proc = subprocess.run(
            [sys.executable, str(ENGINE_JOB), str(spec_path), str(out_path)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=ENGINE_TIMEOUT_S,
            check=False,
        )
    if proc.returncode != 0:
        tail = log_path.read_text()[-4000:]
        raise AssertionError(f"engine on {model} failed (exit {proc.returncode}); log tail:\n{tail}")
    with np.load(out_path) as data:
        return dict(data)
