"""The device of this process as vLLM's platform sees it, for grok_common.attention's decision (imports
vLLM: engine processes only)."""

from __future__ import annotations

from grok_common.attention import Device


def current_device() -> Device:
    from vllm.platforms import current_platform

    if current_platform.is_cuda():
        capability = current_platform.get_device_capability()
        return Device("cuda", (capability.major, capability.minor) if capability is not None else None)
    if current_platform.is_rocm():
        return Device("rocm")
    return Device("cpu")
