"""grok-server: a gRPC generation API over vLLM, and Grok-1 as a vLLM model plugin.

Importing this package stays cheap (no vLLM, no torch): the client uses it too.
"""

__version__ = "0.1.0"
