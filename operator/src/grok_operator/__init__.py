"""grok-operator: serves Grok-1 on Kubernetes GPU clusters with vLLM."""

__version__ = "0.1.0"
