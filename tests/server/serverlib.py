"""Helpers for the gRPC server tests: start real `grok-server` processes, read their metrics and health."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

# v1 and v1alpha reflection messages are the same on the wire: one set of classes asks both.
from grpc_reflection.v1alpha import reflection_pb2

from grok_devcluster import local
from grok_devcluster.local import LocalServer as ServerProcess
from grok_devcluster.local import free_port, parse_metrics, wait

__all__ = [
    "BASE_FLAGS",
    "SERVER_START_TIMEOUT",
    "Certs",
    "EngineHold",
    "ServerProcess",
    "beyond_loopback",
    "free_port",
    "health_status",
    "launch_server",
    "listening_addresses",
    "make_certs",
    "parse_metrics",
    "running_server",
    "wait_idle",
    "wait_metric",
    "wait_serving",
]

SERVER_START_TIMEOUT = 300.0

# Flags every test server gets: a small, fixed KV cache and eager mode keep starts fast on the CPU.
BASE_FLAGS = ("--enforce-eager", "--kv-cache-memory-bytes", str(256 * 1024 * 1024), "--dtype", "float32")


def launch_server(model: Path, workdir: Path, *flags: str, nice: int = 0) -> ServerProcess:
    """Starts grok-server without waiting for it (tests of the loading phase watch it come up)."""
    return local.launch_server(model, workdir, *BASE_FLAGS, *flags, nice=nice)


def health_status(channel: grpc.Channel, service: str = "") -> str:
    stub = health_pb2_grpc.HealthStub(channel)
    resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def stream_outcome(call: Iterator[Any], first: threading.Event) -> tuple[grpc.StatusCode, str]:
    """Reads a stream to its end: its final status code and details; `first` is set at the first message
    (or at the end, when there was none)."""
    try:
        for _ in call:
            first.set()
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    finally:
        first.set()


def reflect(channel: grpc.Channel, version: str, symbol: str) -> tuple[set[str], set[str]]:
    """Server reflection asked in `version` (v1 or v1alpha, by its own method path): the services listed, and
    the names of the files describing `symbol` (and its dependencies)."""
    method = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    request, response = reflection_pb2.ServerReflectionRequest, reflection_pb2.ServerReflectionResponse
    call = channel.stream_stream(method, request_serializer=request.SerializeToString,
                                 response_deserializer=response.FromString)
    asks = [request(list_services=""), request(file_containing_symbol=symbol)]
    answers = list(call(iter(asks), timeout=30))
    names = {s.name for a in answers for s in a.list_services_response.service}
    files = {descriptor_pb2.FileDescriptorProto.FromString(f).name
             for a in answers for f in a.file_descriptor_response.file_descriptor_proto}
    return names, files


def wait_serving(
    server: ServerProcess, channel: grpc.Channel | None = None, timeout: float = SERVER_START_TIMEOUT
) -> None:
    own = channel is None
    channel = channel or grpc.insecure_channel(server.target)

    def serving() -> bool:
        if server.proc.poll() is not None:
            raise RuntimeError(f"grok-server exited with {server.proc.returncode}:\n{server.log()[-5000:]}")
        return health_status(channel) == "SERVING"

    try:
        wait(serving, timeout, "grok-server to be SERVING", interval=0.25, transient=(grpc.RpcError,))
    except TimeoutError as e:
        raise TimeoutError(f"{e}:\n{server.log()[-5000:]}") from e
    finally:
        if own:
            channel.close()


@contextlib.contextmanager
def running_server(model: Path, workdir: Path, *flags: str) -> Iterator[ServerProcess]:
    server = launch_server(model, workdir, *flags)
    try:
        wait_serving(server)
        yield server
    finally:
        server.stop()


class EngineHold:
    """Freezes a server's engine core (SIGSTOP) and lets it run again (SIGCONT), under the test's control.

    While held, no request advances by a single token, whatever the machine's speed: a request is "still
    running" at a moment because the test holds it, not because the CPU is slow. The gRPC frontend runs in
    the server's own process and keeps answering (health, admission, drain, aborts) meanwhile. Always
    released on exit, so that the server can shut its engine down.
    """

    def __init__(self, server: ServerProcess | None = None, pids: list[int] | None = None) -> None:
        self.pids = server.engine_core_pids() if server is not None else list(pids or [])
        if not self.pids:
            raise RuntimeError("the server has no engine-core process to hold")
        self.held = False

    def _signal(self, sig: signal.Signals) -> None:
        for pid in self.pids:
            os.kill(pid, sig)

    def hold(self, timeout: float = 60) -> None:
        self._signal(signal.SIGSTOP)
        self.held = True
        # SIGSTOP takes effect asynchronously: return only once every thread has stopped, so that the engine
        # takes no further step after hold().
        wait(lambda: all(_stopped(pid) for pid in self.pids), timeout, f"the engine core {self.pids} to stop",
             interval=0.005)

    def release(self) -> None:
        self._signal(signal.SIGCONT)
        self.held = False

    def __enter__(self) -> EngineHold:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.release()


def _stopped(pid: int) -> bool:
    """Whether every thread of `pid` is stopped (or gone)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return True
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if stat.rsplit(")", 1)[1].split()[0] not in ("T", "t", "Z", "X"):
            return False
    return True


def wait_metric(server: ServerProcess, name: str, value: float, timeout: float = 60) -> None:
    """Polls a metric until it equals `value`: gauges and counters move a moment after the client sees the
    call end (the server frees a request's slot, then counts its outcome)."""
    wait(lambda: server.metric(name) == value, timeout, f"{name} to reach {value}", interval=0.05)


def wait_idle(server: ServerProcess, timeout: float = 120) -> dict[str, float]:
    """Until nothing is in flight or running; returns that scrape. (The gauges follow the end of a call by a
    moment, and a call's end reaches the server a moment after the client saw it.)"""
    def idle() -> dict[str, float] | None:
        m = server.metrics()
        return m if m["grok_requests_running"] == 0 and m["grok_requests_in_flight"] == 0 else None

    return wait(idle, timeout, "the server to be idle", interval=0.05)


@dataclass
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certs(out: Path) -> Certs:
    """A throwaway CA, a server certificate for localhost/127.0.0.1 and a client certificate."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("grok-test-ca"))
        .issuer_name(name("grok-test-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usage: x509.ObjectIdentifier, san: list[x509.GeneralName]) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)

    localhost = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server_cert, server_key = leaf("localhost", ExtendedKeyUsageOID.SERVER_AUTH, localhost)
    client_cert, client_key = leaf("grok-test-client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    certs = Certs(
        out / "ca.pem", out / "server.pem", out / "server-key.pem", out / "client.pem", out / "client-key.pem"
    )
    certs.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    certs.server_cert.write_bytes(server_cert)
    certs.server_key.write_bytes(server_key)
    certs.client_cert.write_bytes(client_cert)
    certs.client_key.write_bytes(client_key)
    return certs


def listening_addresses(pids: list[int]) -> set[tuple[str, int]]:
    """The (address, port) pairs the processes `pids` listen on for TCP, from /proc: what they bind,
    whatever their command lines say ("0.0.0.0"/"::" mean every interface of the host)."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, PermissionError, ProcessLookupError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = str(fd.readlink())
                    if target.startswith("socket:["):
                        inodes.add(target[len("socket:["):-1])
    found: set[tuple[str, int]] = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local_address, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            hex_ip, hex_port = local_address.split(":")
            raw = bytes.fromhex(hex_ip)
            # /proc prints the address as 32-bit words in host (little-endian) order.
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.add((socket.inet_ntop(family, raw), int(hex_port, 16)))
    return found


def beyond_loopback(addresses: set[tuple[str, int]]) -> set[tuple[str, int]]:
    def loopback(host: str) -> bool:
        address = ipaddress.ip_address(host)
        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, as IPv6 sockets show IPv4 binds
        return (mapped or address).is_loopback

    return {(host, port) for host, port in addresses if not loopback(host)}
