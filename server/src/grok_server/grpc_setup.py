"""The gRPC server setup lives in grok-rpc (grok_rpc.grpc_setup), shared with grok-router; this module stays
only for grok_server.server.main's import until that line moves to grok_rpc (no logic here)."""

from grok_rpc.grpc_setup import SERVICE_NAME, generation_server

__all__ = ["SERVICE_NAME", "generation_server"]
