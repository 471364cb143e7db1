"""A small synchronous Python client for grok.serving.v1 (no vLLM needed).

    from grok_server.client import GrokClient

    with GrokClient("localhost:50051") as client:
        result = client.generate("Hello", max_tokens=32, temperature=0)
        print(result.text, result.finish_reason)
        for chunk in client.generate_stream("Hello", max_tokens=32):
            print(chunk.text, end="", flush=True)
"""

from __future__ import annotations

import json
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                    "repetition_penalty", "seed")


class GrokError(Exception):
    """An RPC failed. `code` is the gRPC status; `retry_after_ms` is set when the server gave a retry hint."""

    def __init__(self, code: grpc.StatusCode, details: str, retry_after_ms: int | None = None) -> None:
        self.code = code
        self.details = details
        self.retry_after_ms = retry_after_ms
        super().__init__(describe(code, details, retry_after_ms))


def describe(code: grpc.StatusCode, details: str, retry_after_ms: int | None = None) -> str:
    """A one-line explanation of a failed RPC, with what to do about the common ones."""
    hint = {
        grpc.StatusCode.UNAVAILABLE: "the server is unreachable, loading, draining, or restarting",
        grpc.StatusCode.UNAUTHENTICATED: "pass a valid bearer token (--token-file / token=)",
        grpc.StatusCode.DEADLINE_EXCEEDED: "the request took longer than its deadline (--timeout / timeout=)",
    }.get(code)
    text = f"{code.name}: {details}"
    if retry_after_ms is not None:
        text += f" (retry after {retry_after_ms} ms)"
    if hint:
        text += f" [{hint}]"
    return text


def _error(e: grpc.RpcError) -> GrokError:
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = (e.details() if hasattr(e, "details") else None) or str(e)
    retry: int | None = None
    trailing = e.trailing_metadata() if hasattr(e, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == "retry-after-ms":
            try:
                retry = int(value)
            except ValueError:
                retry = None
    return GrokError(code, details, retry)


def build_request(
    prompt: str | Sequence[int],
    *,
    max_tokens: int | None = None,
    min_tokens: int | None = None,
    stop: Sequence[str] = (),
    stop_token_ids: Sequence[int] = (),
    ignore_eos: bool = False,
    logprobs: int | None = None,
    prompt_logprobs: bool = False,
    echo: bool = False,
    request_id: str = "",
    token_ids_only: bool = False,
    **sampling: Any,
) -> pb.GenerateRequest:
    """A GenerateRequest from keyword arguments.

    `sampling`: temperature, top_p, top_k, min_p, presence/frequency/repetition_penalty, seed.
    `logprobs`: None for none, 0 for the sampled tokens' log-probabilities, N to add the top N alternatives.
    `token_ids_only`: responses without text (the server skips detokenizing).
    """
    unknown = set(sampling) - set(_SAMPLING_FIELDS)
    if unknown:
        raise TypeError(f"unknown sampling parameter(s): {', '.join(sorted(unknown))}")
    req = pb.GenerateRequest(request_id=request_id, echo=echo, token_ids_only=token_ids_only)
    if isinstance(prompt, str):
        req.text = prompt
    else:
        req.token_ids.ids.extend(prompt)
    for name, value in sampling.items():
        if value is not None:
            setattr(req.sampling, name, value)
    if max_tokens is not None:
        req.stopping.max_new_tokens = max_tokens
    if min_tokens is not None:
        req.stopping.min_new_tokens = min_tokens
    req.stopping.stop.extend(stop)
    req.stopping.stop_token_ids.extend(stop_token_ids)
    req.stopping.ignore_eos = ignore_eos
    if logprobs is not None:
        req.logprobs.generated = True
        req.logprobs.top_n = logprobs
    req.logprobs.prompt = prompt_logprobs
    return req


@dataclass
class Credentials:
    """TLS roots (None: system roots), an optional client certificate for mTLS, an optional bearer token."""

    tls: bool = False
    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    token: str | None = None
    server_name: str | None = None  # override the name checked in the server certificate
    extra: dict[str, str] = field(default_factory=dict)


# Calls go round-robin over every address the target resolves to (one address: as pick_first). With a
# headless Service, `dns:///<name>-servers.<namespace>.svc:50051` reaches every Ready server pod, bypassing
# the router; the servers' --max-connection-age makes the client re-resolve and find replicas added since.
ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def open_channel(target: str, creds: Credentials | None = None) -> grpc.Channel:
    creds = creds or Credentials()
    options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", -1),
                                      ("grpc.service_config", ROUND_ROBIN)]
    if creds.server_name:
        options.append(("grpc.ssl_target_name_override", creds.server_name))
    if not (creds.tls or creds.ca_cert or creds.client_cert):
        return grpc.insecure_channel(target, options=options)
    channel_creds = grpc.ssl_channel_credentials(
        root_certificates=creds.ca_cert.read_bytes() if creds.ca_cert else None,
        private_key=creds.client_key.read_bytes() if creds.client_key else None,
        certificate_chain=creds.client_cert.read_bytes() if creds.client_cert else None,
    )
    return grpc.secure_channel(target, channel_creds, options=options)


class GrokClient:
    """Blocking client. Every call raises GrokError on a non-OK status."""

    def __init__(self, target: str, *, credentials: Credentials | None = None, timeout: float | None = None,
                 wait_for_ready: bool = False) -> None:
        self.target = target
        self._creds = credentials or Credentials()
        self._channel = open_channel(target, self._creds)
        self._stub = pb_grpc.GenerationServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self.timeout = timeout
        self.wait_for_ready = wait_for_ready

    def __enter__(self) -> GrokClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _metadata(self) -> list[tuple[str, str]]:
        md = list(self._creds.extra.items())
        if self._creds.token:
            md.append(("authorization", f"Bearer {self._creds.token}"))
        return md

    def _kw(self, timeout: float | None) -> dict[str, Any]:
        return {"timeout": timeout if timeout is not None else self.timeout, "metadata": self._metadata(),
                "wait_for_ready": self.wait_for_ready}

    def generate(self, prompt: str | Sequence[int] | pb.GenerateRequest, *, timeout: float | None = None,
                 **options: Any) -> pb.GenerateResponse:
        req = prompt if isinstance(prompt, pb.GenerateRequest) else build_request(prompt, **options)
        try:
            return self._stub.Generate(req, **self._kw(timeout))
        except grpc.RpcError as e:
            raise _error(e) from None

    def generate_stream(self, prompt: str | Sequence[int] | pb.GenerateRequest, *,
                        timeout: float | None = None, **options: Any,
                        ) -> Generator[pb.GenerateResponse, None, None]:
        """Yields deltas; closing the iterator early (break) cancels the request on the server."""
        req = prompt if isinstance(prompt, pb.GenerateRequest) else build_request(prompt, **options)
        call = self._stub.GenerateStream(req, **self._kw(timeout))
        try:
            yield from call
        except grpc.RpcError as e:
            raise _error(e) from None
        finally:
            call.cancel()  # a no-op once the stream has ended

    def tokenize(self, text: str, *, add_special_tokens: bool = True, return_tokens: bool = False,
                 timeout: float | None = None) -> pb.TokenizeResponse:
        req = pb.TokenizeRequest(text=text, add_special_tokens=add_special_tokens,
                                 return_tokens=return_tokens)
        try:
            return self._stub.Tokenize(req, **self._kw(timeout))
        except grpc.RpcError as e:
            raise _error(e) from None

    def model_info(self, *, timeout: float | None = None) -> pb.ModelInfo:
        try:
            return self._stub.GetModelInfo(pb.GetModelInfoRequest(), **self._kw(timeout))
        except grpc.RpcError as e:
            raise _error(e) from None

    def health(self, service: str = "", *, timeout: float | None = 5.0) -> str:
        """'SERVING', 'NOT_SERVING', ... (health needs no token)."""
        try:
            resp = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as e:
            raise _error(e) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
