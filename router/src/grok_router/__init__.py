"""grok-router: one address for a GrokDeployment's replicas (gRPC and OpenAI-compatible HTTP).

The grok-router distribution (router/): it shares the generated grok.serving.v1 stubs, the gRPC server setup
and the metrics reader with grok-server through grok-rpc (rpc/), and the pod-Ready reading with the operator
through grok-common; it never imports grok_server. Imports neither vLLM nor torch: its image is small.
"""
