"""Output tokens/s of the Grok-1 plugin against vLLM's built-in Mixtral, same shapes, same engine settings.

    .venv/bin/python bench/model_vs_mixtral.py [--size tiny|small] [--dtype bfloat16|float32] [--rounds 3]
        [--passes 2] [--output-tokens 128] [--compile] [--workdir DIR]

Both checkpoints are generated locally with the same hidden size, layers, heads, experts, expert width and
vocabulary (Mixtral gets the Grok weights it has a place for, so routing is alike). Each engine runs in its
own process; the two alternate (`--passes` times each) to spread the noise of a shared machine, and each pass
measures `--rounds` rounds of batch 1 and batch 64 (greedy, fixed output length). Printed per model and batch:
median and best output tokens/s (wall clock), and output tokens per CPU-second of the engine processes, which
barely moves with other load on a shared machine; then the Grok/Mixtral ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCHES = (1, 64)
PROMPT_TOKENS = 16


def make_mixtral_twin(grok_dir: Path, out_dir: Path) -> Path:
    """A Mixtral checkpoint of the Grok checkpoint's shape, holding the Grok weights it has a place for."""
    import shutil

    from safetensors.torch import load_file, save_file

    from grok_server.checkpoints.naming import hpcai_to_mixtral

    grok_config = json.loads((grok_dir / "config.json").read_text())
    tensors = {}
    for grok_name, value in load_file(grok_dir / "model.safetensors").items():
        # Mixtral has two norms per layer where Grok-1 has four.
        name = (
            hpcai_to_mixtral(grok_name)
            .replace(".pre_attn_norm.", ".input_layernorm.")
            .replace(".pre_moe_norm.", ".post_attention_layernorm.")
        )
        if ".post_attn_norm." in name or ".post_moe_norm." in name:
            continue
        tensors[name] = value.contiguous()
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    keys = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "num_experts_per_tok",
        "max_position_embeddings",
        "rms_norm_eps",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    )
    config = {key: grok_config[key] for key in keys}
    config |= {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "num_local_experts": grok_config["num_experts"],
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": grok_config["torch_dtype"],
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(grok_dir / name, out_dir / name)
    return out_dir


def worker(spec: dict) -> None:
    """One engine: warm up, then `rounds` rounds of each batch size; prints one JSON line of tokens/s."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(
        model=spec["model"],
        dtype=spec["dtype"],
        enforce_eager=not spec["compile"],
        seed=0,
        kv_cache_memory_bytes=512 << 20,
        max_model_len=1024,
        max_num_seqs=max(BATCHES),
    )
    params = SamplingParams(temperature=0.0, max_tokens=spec["output_tokens"], ignore_eos=True)
    prompts = [
        TokensPrompt(prompt_token_ids=[3 + (7 * i + 13 * j) % 1000 for j in range(PROMPT_TOKENS)])
        for i in range(max(BATCHES))
    ]
    llm.generate(prompts[:8], params, use_tqdm=False)  # warm-up
    results: dict[str, list[float]] = {key: [] for batch in BATCHES for key in (str(batch), f"cpu{batch}")}
    for _ in range(spec["rounds"]):
        for batch in BATCHES:
            cpu_before, start = _engine_cpu_seconds(), time.perf_counter()
            outputs = llm.generate(prompts[:batch], params, use_tqdm=False)
            elapsed, cpu = time.perf_counter() - start, _engine_cpu_seconds() - cpu_before
            generated = sum(len(out.outputs[0].token_ids) for out in outputs)
            results[str(batch)].append(generated / elapsed)
            results[f"cpu{batch}"].append(generated / cpu)
    print("BENCH_RESULT " + json.dumps(results), flush=True)


def _engine_cpu_seconds() -> float:
    """CPU time of this process and the engine processes it spawned: unlike wall time, it hardly depends on
    what else the (shared) machine runs."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for process in (me, *me.children(recursive=True)):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def run_worker(spec: dict, workdir: Path) -> dict[str, list[float]]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TMPDIR": str(workdir),
        "VLLM_CACHE_ROOT": str(workdir / "cache"),
    }
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line.removeprefix("BENCH_RESULT "))
    raise RuntimeError(
        f"benchmark worker for {spec['model']} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )


def report(passes: dict[str, list[dict[str, list[float]]]], title: str) -> None:
    """Per model: median and best wall-clock tokens/s, and tokens per CPU-second of the engine processes.
    Ratios: the median over passes of each pass's ratio (a Grok pass and the Mixtral pass right after it see
    about the same machine load), best over best, and per CPU-second (robust to other load)."""

    def pooled(runs: list[dict[str, list[float]]], key: str) -> list[float]:
        return [v for run in runs for v in run[key]]

    grok_passes, mixtral_passes = passes.values()
    print(f"\n{title}")
    print(f"{'':<30}" + "".join(f"{'batch ' + str(b):>14}" for b in BATCHES))
    for name, runs in passes.items():
        rows = (
            ("median tok/s", "", statistics.median),
            ("best tok/s", "", max),
            ("tok per CPU-s", "cpu", statistics.median),
        )
        for label, prefix, pick in rows:
            values = [pick(pooled(runs, f"{prefix}{b}")) for b in BATCHES]
            print(f"{name.split()[0] + ' ' + label:<30}" + "".join(f"{v:>14,.0f}" for v in values))

    def ratio_row(label: str, ratio: dict[int, float]) -> None:
        print(f"{'ratio grok/mixtral ' + label:<30}" + "".join(f"{ratio[b]:>14.3f}" for b in BATCHES))

    ratio_row(
        "(pass)",
        {
            b: statistics.median(
                statistics.median(g[str(b)]) / statistics.median(m[str(b)])
                for g, m in zip(grok_passes, mixtral_passes, strict=True)
            )
            for b in BATCHES
        },
    )
    ratio_row(
        "(best)", {b: max(pooled(grok_passes, str(b))) / max(pooled(mixtral_passes, str(b))) for b in BATCHES}
    )
    ratio_row(
        "(CPU-s)",
        {
            b: statistics.median(pooled(grok_passes, f"cpu{b}"))
            / statistics.median(pooled(mixtral_passes, f"cpu{b}"))
            for b in BATCHES
        },
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=("tiny", "small"), default="tiny")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--compile", action="store_true", help="let vLLM compile (default: enforce_eager)")
    parser.add_argument(
        "--workdir", type=Path, help="keep checkpoints and logs here (default: a temp folder)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return 0

    from grok_server.checkpoints.tiny import make_tiny_checkpoint

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="grok-bench-"))
    grok = make_tiny_checkpoint(workdir / f"grok-{args.size}", size=args.size, torch_dtype=args.dtype)
    models = {
        "grok1 (plugin)": grok,
        "mixtral (vLLM)": make_mixtral_twin(grok, workdir / f"mixtral-{args.size}"),
    }
    common = {
        "dtype": args.dtype,
        "rounds": args.rounds,
        "output_tokens": args.output_tokens,
        "compile": args.compile,
    }
    # passes[name][pass][batch] = the rounds' tokens/s of that pass
    passes: dict[str, list[dict[str, list[float]]]] = {name: [] for name in models}
    for number in range(args.passes):
        for name, path in models.items():
            result = run_worker({"model": str(path), **common}, workdir)
            passes[name].append(result)
            print(
                f"pass {number + 1}/{args.passes} {name}: "
                + ", ".join(f"batch {b}: {statistics.median(result[str(b)]):,.0f} tok/s" for b in BATCHES),
                flush=True,
            )
    report(
        passes,
        f"{args.size} checkpoints, {args.dtype}, {args.output_tokens} output tokens per request, "
        f"{'compiled' if args.compile else 'eager'}, {args.passes} passes x {args.rounds} rounds",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
