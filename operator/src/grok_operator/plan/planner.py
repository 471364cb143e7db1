"""The capacity planner (pure): how many GPUs one replica needs, and what that leaves for the KV cache.

Per GPU, vLLM may use `gpu_memory_utilization` of the device's memory. From that it needs the weights
(split across tensor-parallel ranks), a reserve for activations, CUDA graphs and communication buffers,
and whatever is left is KV cache. A tensor-parallel size is acceptable when the KV cache holds at least
`min_sequences` sequences of `max_model_len` tokens. `auto` picks the smallest acceptable size: fewer
GPUs per replica means more replicas for the same GPUs, and less communication per token.

When no tensor-parallel size on one node holds a replica, the replica spans nodes: tensor parallel within a
node, pipeline parallel across nodes (one stage per node, the layers split as vLLM splits them: the first
stages take the remainder), up to `max_nodes_per_replica`. The largest stage decides what a GPU must hold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from grok_common.quantization import bytes_per_weight, canonical, is_fp8
from grok_operator.api.gpus import GIB, GPU_PRODUCTS, GPUProduct
from grok_operator.api.models import ModelShape
from grok_operator.api.spec import GPUSpec, ModelSpec, ParallelismSpec, ServerSpec

DTYPE_BYTES = {"auto": 2, "bfloat16": 2, "float16": 2, "float32": 4}
KV_CACHE_BYTES = 2  # bf16 KV cache
ACTIVATION_RESERVE_GIB = 4.0  # activations, CUDA graphs, NCCL buffers, CUDA context: per GPU


@dataclass(frozen=True)
class PlanRequest:
    """What the planner sizes (admission.plan_request builds one from a spec). The defaults are the spec's
    own: a dataclass keeps a field's plain default as its class attribute, so each is written once, in
    api/spec."""

    shape: ModelShape
    gpu: GPUProduct
    quantization: str = ModelSpec.quantization  # grok_common.quantization's names
    dtype: str = ModelSpec.dtype
    max_model_len: int = ModelSpec.max_model_len
    tensor_parallel: int | None = None  # None: choose (spec.parallelism.tensor auto)
    gpus_per_node: int = GPUSpec.per_node
    gpu_memory_utilization: float = ServerSpec.gpu_memory_utilization
    gpu_memory_gib: float | None = None  # overrides the product's memory (e.g. MIG slices)
    min_sequences: int = ServerSpec.min_concurrent_sequences
    pipeline: int | None = None  # pipeline stages (nodes per replica); None: 1 if one node fits, else choose
    max_nodes_per_replica: int = ParallelismSpec.max_nodes_per_replica


@dataclass(frozen=True)
class Plan:
    tensor_parallel_size: int
    gpus_per_replica: int
    weight_gib_per_gpu: float
    kv_cache_gib_per_gpu: float
    max_concurrent_sequences: int  # sequences of max_model_len tokens the KV cache holds
    gpu_product: str
    gpu_memory_gib: float
    pipeline_parallel_size: int = 1  # pipeline stages; each on a node of its own when more than one

    @property
    def nodes_per_replica(self) -> int:
        return self.pipeline_parallel_size

    @property
    def multi_node(self) -> bool:
        return self.pipeline_parallel_size > 1

    def to_status(self) -> dict[str, Any]:
        """camelCase for the resource's status.plan."""
        d = asdict(self)
        return {
            "tensorParallelSize": d["tensor_parallel_size"],
            "pipelineParallelSize": d["pipeline_parallel_size"],
            "nodesPerReplica": self.nodes_per_replica,
            "gpusPerReplica": d["gpus_per_replica"],
            "weightGiBPerGPU": round(d["weight_gib_per_gpu"], 2),
            "kvCacheGiBPerGPU": round(d["kv_cache_gib_per_gpu"], 2),
            "maxConcurrentSequences": d["max_concurrent_sequences"],
            "gpuProduct": d["gpu_product"],
            "gpuMemoryGiB": round(d["gpu_memory_gib"], 1),
        }


class PlanError(ValueError):
    """A spec that cannot work; the message says why and what would."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def weight_bytes(shape: ModelShape, quantization: str, dtype: str) -> float:
    per_weight = bytes_per_weight(quantization)
    if per_weight is None:
        return shape.parameters * DTYPE_BYTES[dtype]
    # Quantized, the embedding (and tied output head) stays in 16 bits.
    return (shape.parameters - shape.embedding_parameters) * per_weight + shape.embedding_parameters * 2


def _lighter(req: PlanRequest) -> str:
    """What would make the weights lighter, for refusals: fp8, where the GPU runs it and it is not on."""
    return "quantization fp8_per_tensor, " if req.gpu.fp8 and not is_fp8(req.quantization) else ""


def _check_fp8(req: PlanRequest) -> None:
    """fp8 only on GPUs with fp8 tensor cores; the refusal says what bf16 would take instead."""
    if not is_fp8(req.quantization) or req.gpu.fp8:
        return
    major, minor = req.gpu.compute_capability or (0, 0)  # known: unknown ones are given fp8
    fp8_products = ", ".join(p.product for p in GPU_PRODUCTS.values() if p.fp8 and p.compute_capability)
    try:
        bf16 = plan(replace(req, quantization="none"))
        instead = (f"in bf16 (quantization none) a replica takes {bf16.gpus_per_replica} of them (tensor "
                   f"parallel {bf16.tensor_parallel_size} x pipeline {bf16.pipeline_parallel_size}, "
                   f"{bf16.weight_gib_per_gpu:.1f} GiB of weights per GPU)")
    except PlanError as err:
        instead = f"in bf16 (quantization none) it does not fit either: {err}"
    raise PlanError(
        "FP8Unsupported",
        f"quantization {canonical(req.quantization)} needs fp8 tensor cores, which {req.gpu.product} "
        f"(compute capability {major}.{minor}) does not have: NVIDIA added "
        f"them with compute capability 8.9 ({fp8_products} have them); {instead}")


def largest_stage_fraction(layers: int, pp: int) -> float:
    """The share of the layers on the largest pipeline stage (vLLM gives the remainder to the first ones)."""
    return math.ceil(layers / pp) / layers


def _evaluate(req: PlanRequest, tp: int, pp: int = 1) -> tuple[Plan | None, str]:
    """The plan at one tensor x pipeline size, or why it does not fit."""
    memory_gib = req.gpu_memory_gib or req.gpu.memory_gib
    usable_gib = memory_gib * req.gpu_memory_utilization - ACTIVATION_RESERVE_GIB
    stage = largest_stage_fraction(req.shape.layers, pp)
    weights_gib = weight_bytes(req.shape, req.quantization, req.dtype) * stage / tp / GIB
    kv_gib = usable_gib - weights_gib
    per_sequence = req.shape.kv_bytes_per_token(KV_CACHE_BYTES, tp) * stage * req.max_model_len / GIB
    sequences = int(kv_gib / per_sequence) if kv_gib > 0 else 0
    at = f"tensor parallel {tp}" + (f" x pipeline {pp}" if pp > 1 else "")
    if weights_gib > usable_gib:
        return None, (
            f"at {at} the weights take {weights_gib:.1f} GiB per GPU, more than the "
            f"{usable_gib:.1f} GiB usable on a {memory_gib:.0f} GiB {req.gpu.product}"
        )
    if sequences < req.min_sequences:
        return None, (
            f"at {at} only {max(kv_gib, 0):.1f} GiB per GPU is left for the KV cache: "
            f"{sequences} sequences of {req.max_model_len} tokens, fewer than {req.min_sequences}"
        )
    plan = Plan(tp, tp * pp, weights_gib, kv_gib, sequences, req.gpu.product, memory_gib, pp)
    return plan, ""


def _multi_node(req: PlanRequest, reasons: list[str]) -> Plan:
    """Tensor within a node x pipeline across nodes: the fewest nodes (then the fewest GPUs per node) that
    hold a replica, within max_nodes_per_replica; else why not, with the figure that would fit."""
    shape = req.shape
    tensors = ([req.tensor_parallel] if req.tensor_parallel is not None else
               [t for t in range(1, req.gpus_per_node + 1) if shape.valid_tensor_parallel(t)])
    stages = [req.pipeline] if req.pipeline is not None else range(2, shape.layers + 1)
    for pp in stages:
        for tp in tensors:
            result, why = _evaluate(req, tp, pp)
            if result is not None:
                if pp > req.max_nodes_per_replica:
                    raise PlanError(
                        "TooManyNodesPerReplica",
                        f"a replica needs {pp} nodes (tensor parallel {tp} x pipeline {pp}, {tp * pp} "
                        f"{req.gpu.product} GPUs), more than maxNodesPerReplica {req.max_nodes_per_replica}: "
                        f"raise parallelism.maxNodesPerReplica, use {_lighter(req)}or GPUs with more memory")
                return result
            reasons.append(why)
    raise PlanError(
        "InsufficientGPUMemory",
        f"the model does not fit even with {max(stages)} pipeline stages: {reasons[-1]}")


def _check_tensor(req: PlanRequest) -> int:
    shape, tp = req.shape, req.tensor_parallel
    assert tp is not None
    if not shape.valid_tensor_parallel(tp):
        valid = [t for t in range(1, req.gpus_per_node + 1) if shape.valid_tensor_parallel(t)]
        raise PlanError(
            "InvalidTensorParallel",
            f"tensor parallel size {tp} does not divide the model's "
            f"{shape.heads} query heads and {shape.kv_heads} KV heads; valid sizes: {valid}",
        )
    if tp > req.gpus_per_node:
        raise PlanError(
            "TooManyGPUsPerReplica",
            f"tensor parallel size {tp} needs {tp} GPUs on one node, but nodes have {req.gpus_per_node}: "
            "a replica spans nodes by pipeline stages (parallelism.pipeline); tensor parallel stays in one",
        )
    return tp


def plan(req: PlanRequest) -> Plan:
    """The smallest valid tensor-parallel size that fits (or the requested one, checked)."""
    shape = req.shape
    _check_fp8(req)
    if req.max_model_len > shape.max_context:
        raise PlanError(
            "ContextTooLong",
            f"maxModelLen {req.max_model_len} exceeds the model's context of {shape.max_context} tokens",
        )
    if req.pipeline is not None and req.pipeline > 1:
        if req.pipeline > shape.layers:
            raise PlanError("InvalidPipelineParallel",
                            f"pipeline size {req.pipeline} exceeds the model's {shape.layers} layers")
        if req.tensor_parallel is not None:
            _check_tensor(req)
        return _multi_node(req, [])
    if req.tensor_parallel is not None:
        tp = _check_tensor(req)
        result, why = _evaluate(req, tp)
        if result is not None:
            return result
        if req.pipeline == 1:
            raise PlanError("InsufficientGPUMemory", why)
        return _multi_node(req, [why])

    candidates = [t for t in range(1, req.gpus_per_node + 1) if shape.valid_tensor_parallel(t)]
    reasons = []
    for tp in candidates:
        result, why = _evaluate(req, tp)
        if result is not None:
            return result
        reasons.append(why)
    if req.pipeline is None:  # auto: across nodes
        return _multi_node(req, reasons)
    total_gib = weight_bytes(shape, req.quantization, req.dtype) / GIB
    # The smallest valid tensor-parallel size that would fit if a replica could span nodes.
    wider = PlanRequest(**{**req.__dict__, "gpus_per_node": 64})
    needed = next(
        (
            t
            for t in range(req.gpus_per_node + 1, 65)
            if shape.valid_tensor_parallel(t) and _evaluate(wider, t)[0] is not None
        ),
        None,
    )
    need = (
        (
            f"it needs {needed} GPUs per replica ({math.ceil(needed / req.gpus_per_node)} nodes of "
            f"{req.gpus_per_node}: set parallelism.pipeline to auto to span nodes)"
        )
        if needed
        else "it does not fit even across 64 GPUs"
    )
    precision = "bf16" if bytes_per_weight(req.quantization) is None else canonical(req.quantization)
    raise PlanError(
        "InsufficientGPUMemory",
        f"the model does not fit on {req.gpus_per_node} {req.gpu.product} GPUs: its {precision} weights take "
        f"{total_gib:.0f} GiB ({total_gib * GIB / 1e9:.0f} GB) and {need}; {reasons[-1]}; "
        f"use {_lighter(req)}GPUs with more memory, or a shorter maxModelLen",
    )
