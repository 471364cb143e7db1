"""Admission (pure): a GrokDeployment read, checked and planned, or refused with a reason and a message.

What grok-server would refuse at start is refused here instead, before a GPU is taken, as a PlanValid=False
condition and an Event, with the server's own words (grok_common).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from grok_common.attention import ENV_VAR, AttentionBackendRefused, Device, check_env, engine_backend_args
from grok_common.engine_args import engine_args_in
from grok_common.load_formats import SERVER_IMAGE_MODULES, load_format_problem
from grok_operator.api.gpus import GPU_PRODUCTS, GPUProduct
from grok_operator.api.resource import GrokDeploymentSpec
from grok_operator.plan.planner import Plan, PlanError, PlanRequest, plan


@dataclass(frozen=True)
class Admission:
    spec: GrokDeploymentSpec | None  # None: the spec could not be read
    plan: Plan | None  # None: refused
    refusal: tuple[str, str] | None = None  # (reason, message) when refused


def admit(body: dict[str, Any]) -> Admission:
    """The spec and its plan, or why not (InvalidSpec, or the planner's and the checks' reasons)."""
    try:
        spec = GrokDeploymentSpec.from_body(body)
    except ValueError as err:
        return Admission(None, None, ("InvalidSpec", str(err)))
    try:
        check_attention_backend(spec)
        check_load_format(spec)
        return Admission(spec, plan(plan_request(spec)))
    except PlanError as err:
        return Admission(spec, None, (err.reason, str(err)))
    except ValueError as err:
        return Admission(spec, None, ("InvalidSpec", str(err)))


def check_attention_backend(spec: GrokDeploymentSpec) -> None:
    """spec.server.engineArgs, and VLLM_ATTENTION_BACKEND in spec.server.env, must not ask for an attention
    backend that drops Grok-1's logit soft-cap on the spec's GPUs (the checks grok-server runs at start,
    grok_common.attention.check_start). Raises PlanError (AttentionBackendDropsSoftCap, InvalidEngineArgs)."""
    try:
        engine_args = engine_args_in(spec.server.engine_args)
    except ValueError as err:
        raise PlanError("InvalidEngineArgs", f"spec.server.engineArgs: {err}") from None
    device = spec.gpu.attention_device if spec.gpu is not None else Device("cuda")
    try:
        engine_backend_args(engine_args, device)
    except AttentionBackendRefused as err:
        raise PlanError("AttentionBackendDropsSoftCap", f"spec.server.engineArgs: {err}") from None
    # The container's environment: the last entry of the name wins. A value from a ConfigMap or Secret
    # (valueFrom) cannot be read here; grok-server checks it at start.
    entries = [e for e in spec.server.env if isinstance(e, dict) and e.get("name") == ENV_VAR]
    environ = {ENV_VAR: str(entries[-1]["value"])} if entries and "value" in entries[-1] else {}
    try:
        check_env(environ, device)
    except AttentionBackendRefused as err:
        raise PlanError("AttentionBackendDropsSoftCap", f"spec.server.env: {err}") from None


# The project's own server image (server/Dockerfile): the operator knows which loader packages it has.
SERVER_IMAGE_REPOSITORY = "grok-serve/server"


def check_load_format(spec: GrokDeploymentSpec) -> None:
    """spec.model.loadFormat must be one the platform can run. Raises PlanError (LoadFormatUnsupported)."""
    image = spec.server.image.rsplit("@", 1)[0]
    repository = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
    device = spec.gpu.attention_device if spec.gpu is not None else Device("cuda")
    problem = load_format_problem(
        spec.model_spec.load_format, cuda=device.platform == "cuda",
        modules=SERVER_IMAGE_MODULES if repository.endswith(SERVER_IMAGE_REPOSITORY) else None,
        presharded=spec.model.scheme == "pvc")
    if problem is not None:
        raise PlanError("LoadFormatUnsupported", f"spec.model.loadFormat: {problem}")


def plan_request(spec: GrokDeploymentSpec) -> PlanRequest:
    """What the planner sizes for this spec. Raises ValueError for a GPU product it cannot plan for."""
    pipeline = spec.parallelism.pipeline
    gpu = spec.gpu
    if gpu is None:
        memory_gib = spec.gpu_spec.memory_gib
        if memory_gib is None:
            known = ", ".join(sorted(GPU_PRODUCTS))
            raise ValueError(
                f"unknown GPU product {spec.gpu_product_name!r}: set spec.gpu.memoryGiB to plan "
                f"for it, or use one of {known}"
            )
        gpu = GPUProduct(spec.gpu_product_name, int(memory_gib * 1024))
    return PlanRequest(
        shape=spec.shape,
        gpu=gpu,
        quantization=spec.quantization,
        dtype=spec.dtype,
        max_model_len=spec.max_model_len,
        tensor_parallel=spec.tensor_parallel,
        gpus_per_node=spec.gpus_per_node,
        gpu_memory_utilization=spec.server.gpu_memory_utilization,
        gpu_memory_gib=spec.gpu_spec.memory_gib,
        min_sequences=spec.server.min_concurrent_sequences,
        pipeline=None if pipeline == "auto" else int(pipeline),
        max_nodes_per_replica=spec.parallelism.max_nodes_per_replica,
    )

