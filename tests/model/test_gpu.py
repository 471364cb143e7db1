"""On an NVIDIA GPU with the CUDA `vllm` package: bf16 and vLLM's fp8 quantization of the plugin.

Skipped where there is no GPU (the CPU build of vLLM has no fp8 kernels). Loose bounds: bf16 and fp8 round
large random weights, so these check the model runs and stays close to the float64 reference, not 1e-4.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from grok_engines import PROMPTS, run_engine
from grok_reference import Grok1Reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU"),
]


@pytest.mark.parametrize(("quantization", "min_top1_agreement"), [(None, 0.9), ("fp8_per_tensor", 0.75)])
def test_low_precision_on_gpu_tracks_the_reference(
    tiny_grok_checkpoint: Path, tmp_path: Path, quantization: str | None, min_top1_agreement: float
) -> None:
    engine_args = {"gpu_memory_utilization": 0.2}
    if quantization:
        engine_args["quantization"] = quantization
    engine = run_engine(tmp_path, tiny_grok_checkpoint, dtype="bfloat16", engine=engine_args)
    reference = Grok1Reference(tiny_grok_checkpoint)
    agree, total = 0, 0
    for i, prompt in enumerate(PROMPTS):
        want = reference.logprobs(prompt).numpy()[:-1]
        got = engine[f"prompt{i}"]
        agree += int((want.argmax(-1) == got.argmax(-1)).sum())
        total += len(want)
    assert agree / total >= min_top1_agreement
