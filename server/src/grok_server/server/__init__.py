"""The gRPC generation server (`grok-server`). Importing this package does not import vLLM."""
