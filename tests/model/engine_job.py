"""Run one vLLM engine over a checkpoint and save what the correctness tests compare.

Usage: python engine_job.py SPEC.json OUT.npz

It runs as its own process because vLLM's CPU backend spawns worker processes (engine construction must sit
under `if __name__ == "__main__"`), and so each engine's memory is returned when it exits. SPEC keys: model,
prompts (lists of token ids), max_tokens, and optional dtype, tensor_parallel_size, engine (extra LLM kwargs).
OUT holds, per prompt i: `prompt{i}` [len-1, vocab] prompt log-probs (row t = distribution of token t+1),
`tokens{i}` the greedy continuation, `generated{i}` [max_tokens, vocab] their log-prob distributions.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def _dense(logprobs_by_token: dict, vocab_size: int) -> np.ndarray:
    row = np.full(vocab_size, -np.inf, dtype=np.float64)
    for token, logprob in logprobs_by_token.items():
        row[token] = logprob.logprob
    return row


def main(spec_path: str, out_path: str) -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    spec = json.loads(Path(spec_path).read_text())
    engine_kwargs = {
        "dtype": spec.get("dtype", "float32"),
        "tensor_parallel_size": spec.get("tensor_parallel_size", 1),
        "enforce_eager": True,
        "kv_cache_memory_bytes": 32 << 20,
        "max_model_len": 256,
        "max_num_seqs": 8,
        "max_logprobs": -1,
        "seed": 0,
        **spec.get("engine", {}),
    }
    llm = LLM(model=spec["model"], **engine_kwargs)
    vocab_size = llm.llm_engine.model_config.get_vocab_size()
    params = SamplingParams(
        temperature=0.0, max_tokens=spec["max_tokens"], ignore_eos=True, prompt_logprobs=-1, logprobs=-1
    )
    outputs = llm.generate(
        [TokensPrompt(prompt_token_ids=ids) for ids in spec["prompts"]], params, use_tqdm=False
    )
    arrays: dict[str, np.ndarray] = {}
    for i, out in enumerate(outputs):
        completion = out.outputs[0]
        arrays[f"prompt{i}"] = np.stack([_dense(row, vocab_size) for row in out.prompt_logprobs[1:]])
        arrays[f"tokens{i}"] = np.asarray(completion.token_ids, dtype=np.int64)
        arrays[f"generated{i}"] = np.stack([_dense(row, vocab_size) for row in completion.logprobs])
    np.savez(out_path, **arrays)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
