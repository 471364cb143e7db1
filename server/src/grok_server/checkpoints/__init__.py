"""Grok-1 checkpoints: naming maps, the xAI ckpt-0 reader/writer, `grok-convert` and tiny test checkpoints.

Importing this package is cheap; the modules import numpy/torch/safetensors as they need them.
"""
