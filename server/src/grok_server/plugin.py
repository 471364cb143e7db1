"""vLLM general plugin: makes Grok-1 loadable by every vLLM process.

vLLM calls `register()` (entry point `vllm.general_plugins: grok1`) in the API process and in each engine and
worker process, so it must be idempotent. It registers the config class with transformers' AutoConfig and the
model *class* with vLLM's registry. A class (not a `module:Class` string) is inspected in this process, in a
fraction of a second; a string makes vLLM inspect it in a fresh subprocess that imports torch and vLLM again
(seconds on every start, since that subprocess's cache lives under the pod's own VLLM_CACHE_ROOT). Importing
the model module costs about 0.3 s here, and every engine process imports it anyway to build the model.

In engine processes it also starts the start-up recorder (startup_events), which passes the phases vLLM times
there (weights, compile, KV cache) to grok-server.
"""

from __future__ import annotations

import time

from grok_server.model import GROK1_ARCHITECTURES
from grok_server.server import rendezvous, startup_events


def register() -> None:
    started = time.time()
    from transformers import AutoConfig
    from vllm import ModelRegistry

    from grok_server.model.config import Grok1Config

    AutoConfig.register(Grok1Config.model_type, Grok1Config, exist_ok=True)
    supported = set(ModelRegistry.get_supported_archs())
    missing = [arch for arch in GROK1_ARCHITECTURES if arch not in supported]
    if missing:
        from grok_server.model.grok1 import Grok1ForCausalLM

        for arch in missing:
            ModelRegistry.register_model(arch, Grok1ForCausalLM)
        startup_events.record("model_class_registered", seconds=time.time() - started)
    rendezvous.install()  # a no-op unless a replica spanning hosts asked for it
    startup_events.install()  # a no-op unless grok-server asked for it
