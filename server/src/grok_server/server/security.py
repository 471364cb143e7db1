"""Optional transport security (TLS, mTLS) and bearer-token authentication."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

# Probes (kubelet's gRPC probe cannot send headers) must reach health without a token.
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/",)


def load_tokens(path: Path) -> list[str]:
    """One token per line (several allow rotation without downtime); blank lines and #-comments ignored."""
    tokens = [
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not tokens:
        raise ValueError(f"{path}: no token found (one per line)")
    return tokens


def check_authorization(metadata: tuple[tuple[str, Any], ...] | None, tokens: list[str]) -> str | None:
    """None when a valid `authorization: Bearer <token>` is present, else why not (for UNAUTHENTICATED)."""
    values = [v for k, v in (metadata or ()) if k == "authorization"]
    if not values:
        return "missing authorization metadata: send 'authorization: Bearer <token>'"
    value = values[0] if isinstance(values[0], str) else values[0].decode("latin-1")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return "authorization metadata must be 'Bearer <token>'"
    presented = token.strip().encode()
    # Constant-time comparison against every accepted token: no early exit that leaks a prefix.
    ok = False
    for accepted in tokens:
        ok |= hmac.compare_digest(presented, accepted.encode())
    return None if ok else "invalid bearer token"


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: list[str], on_reject: Callable[[str], None] | None = None) -> None:
        self._tokens = tokens
        self._on_reject = on_reject

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if method.startswith(UNAUTHENTICATED_PREFIXES) or handler is None:
            return handler
        reason = check_authorization(handler_call_details.invocation_metadata, self._tokens)
        if reason is None:
            return handler
        if self._on_reject is not None:
            self._on_reject(method)
        return _rejecting_handler(handler, reason)


def _rejecting_handler(handler: grpc.RpcMethodHandler, reason: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that ends the call with UNAUTHENTICATED."""

    async def abort(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort, **kwargs)
    return grpc.unary_unary_rpc_method_handler(abort, **kwargs)


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """TLS with the server's certificate; with `client_ca`, clients must present a certificate it signed."""
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )
