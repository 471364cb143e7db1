"""Grok-1 as a vLLM model.

`config` (the Hugging Face config class) is cheap to import; `grok1` (the vLLM model) imports vLLM and torch
and is loaded lazily by vLLM's model registry.
"""

GROK1_ARCHITECTURES = ("Grok1ModelForCausalLM", "Grok1ForCausalLM")
GROK1_MODEL_CLASS = "grok_server.model.grok1:Grok1ForCausalLM"
