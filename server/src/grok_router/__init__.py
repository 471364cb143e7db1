"""grok-router: one address for a GrokDeployment's replicas (gRPC and OpenAI-compatible HTTP).

A package of its own beside grok_server, in the grok-server distribution (its `router` extra): it shares the
generated grok.serving.v1 stubs and uses, of grok_server, only the vLLM-free grpc_setup, reflection and
exposition (grok_server never imports it). Imports neither vLLM nor torch: its image is grok-server's
distribution without the engine.
"""
