"""Client side of grok.serving.v1: `GrokClient` (Python) and the `grok-client` command. No vLLM needed."""

from grok_server.client.api import Credentials, GrokClient, GrokError, build_request

__all__ = ["Credentials", "GrokClient", "GrokError", "build_request"]
