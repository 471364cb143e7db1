"""Which vLLM weight loaders (`--load-format`) a replica may use, and why not (pure).

One decision in two places with the same words: the operator refuses a spec.model.loadFormat the platform
cannot run at admission (PlanValid=False and an Event, never a crash loop), and grok-server refuses it at
start on a machine that lacks what it needs (for images the operator cannot vouch for).

Read from vLLM 0.32.0's source (`vllm/model_executor/model_loader/__init__.py`, `default_loader.py`,
`runai_streamer_loader.py`, `sharded_state_loader.py`, `weight_utils.py`):

- auto, safetensors: DefaultModelLoader (safetensors, memory-mapped); needs nothing.
- runai_streamer: RunaiModelStreamerLoader, concurrent reads into a CPU buffer; needs the
  `runai_model_streamer` module (PyPI runai-model-streamer).
- fastsafetensors: DefaultModelLoader with fastsafetensors' ParallelLoader (batched reads, GPUDirect); needs
  the `fastsafetensors` module and CUDA devices.
- sharded_state: ShardedStateLoader, one file set per tensor-parallel rank; needs a checkpoint saved
  pre-split for the replica's tensor-parallel size (`save_sharded_state`).
"""

from __future__ import annotations

from dataclasses import dataclass

LOAD_FORMATS = ("auto", "safetensors", "runai_streamer", "fastsafetensors", "sharded_state")


class LoadFormatRefused(ValueError):
    """grok-server's refusal to start with a load format its machine cannot run (the message says why)."""


@dataclass(frozen=True)
class Needs:
    module: str | None = None   # importable module the loader imports
    package: str | None = None  # its PyPI distribution, for the message
    cuda: bool = False
    presharded: bool = False


NEEDS = {
    "auto": Needs(),
    "safetensors": Needs(),
    "runai_streamer": Needs("runai_model_streamer", "runai-model-streamer"),
    "fastsafetensors": Needs("fastsafetensors", "fastsafetensors", cuda=True),
    "sharded_state": Needs(presharded=True),
}

# What the project's server image (server/Dockerfile, FROM vllm/vllm-openai plus grok-server) installs among
# the loaders' modules: none. An image built with them is named in spec.server.image, and grok-server checks.
SERVER_IMAGE_MODULES: frozenset[str] = frozenset()


def load_format_problem(load_format: str, *, cuda: bool, modules: frozenset[str] | None,
                        presharded: bool) -> str | None:
    """None when `load_format` can run; else why not. `modules`: the loader modules the image has (None: not
    known, as for an image the operator did not build: grok-server checks when it starts). `presharded`:
    whether the model's folder can be a pre-split checkpoint (a pvc:// folder the user filled)."""
    needs = NEEDS.get(load_format)
    if needs is None:
        return f"load format {load_format!r} is not one of {', '.join(LOAD_FORMATS)}"
    if needs.cuda and not cuda:
        return f"load format {load_format} needs CUDA GPUs (fastsafetensors reads into device memory)"
    if needs.module is not None and modules is not None and needs.module not in modules:
        return (f"load format {load_format} needs the Python package {needs.package}, which the server image "
                f"does not install: build an image with it (pip install {needs.package}) and name it in "
                "spec.server.image, or use load format auto")
    if needs.presharded and not presharded:
        return (f"load format {load_format} loads a checkpoint saved pre-split for the replica's "
                "tensor-parallel size (vLLM's save_sharded_state), which the operator does not make: point "
                "spec.model.uri at such a pvc:// folder, or use load format auto")
    return None
