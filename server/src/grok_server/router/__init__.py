"""grok-router: one address for a GrokDeployment's replicas (gRPC and OpenAI-compatible HTTP).

Imports neither vLLM nor torch: its image is grok-server's distribution without the engine.
"""
