"""grok-rpc: what grok-server and grok-router both speak, written once. The generated grok.serving.v1 stubs
(package `grok`, generated from protos/ by the build, never committed), the gRPC server both build
(grpc_setup, reflection) and the reading of a replica's Prometheus text exposition (exposition). No vLLM,
no torch: the router's image installs it without grok-server.
"""
