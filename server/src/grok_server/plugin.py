"""vLLM general plugin: makes Grok-1 loadable by every vLLM process.

vLLM calls `register()` (entry point `vllm.general_plugins: grok1`) in the API process and in each engine and
worker process, so it must be cheap and idempotent: it registers the config class with transformers'
AutoConfig and the model class with vLLM's registry *by name*; the model module (torch, vLLM layers) is only
imported when vLLM builds the model.
"""

from __future__ import annotations

from grok_server.model import GROK1_ARCHITECTURES, GROK1_MODEL_CLASS
from grok_server.server import rendezvous


def register() -> None:
    from transformers import AutoConfig
    from vllm import ModelRegistry

    from grok_server.model.config import Grok1Config

    AutoConfig.register(Grok1Config.model_type, Grok1Config, exist_ok=True)
    supported = set(ModelRegistry.get_supported_archs())
    for arch in GROK1_ARCHITECTURES:
        if arch not in supported:
            ModelRegistry.register_model(arch, GROK1_MODEL_CLASS)
    rendezvous.install()  # a no-op unless a replica spanning hosts asked for it
