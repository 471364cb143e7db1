"""What grok-server would refuse at start, refused at admission instead (pure): before a GPU is taken, as a
PlanValid=False condition and an Event, with the server's own words (grok_common)."""

from __future__ import annotations

from grok_common.attention import AttentionBackendRefused, Device, engine_backend_args
from grok_common.engine_args import engine_args_in
from grok_operator.planner import PlanError
from grok_operator.resource import GrokDeploymentSpec


def check_attention_backend(spec: GrokDeploymentSpec) -> None:
    """spec.server.engineArgs must not force an attention backend that drops Grok-1's logit soft-cap on the
    spec's GPUs. Raises PlanError (AttentionBackendDropsSoftCap, or InvalidEngineArgs)."""
    try:
        engine_args = engine_args_in(spec.server.engine_args)
    except ValueError as err:
        raise PlanError("InvalidEngineArgs", f"spec.server.engineArgs: {err}") from None
    device = spec.gpu.attention_device if spec.gpu is not None else Device("cuda")
    try:
        engine_backend_args(engine_args, device)
    except AttentionBackendRefused as err:
        raise PlanError("AttentionBackendDropsSoftCap", f"spec.server.engineArgs: {err}") from None
