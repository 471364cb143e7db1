"""Helpers for the gRPC server tests: start real `grok-server` processes, read their metrics and health."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVER_START_TIMEOUT = 300.0
_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")

# Flags every test server gets: a small, fixed KV cache and eager mode keep starts fast on the CPU.
BASE_FLAGS = ("--enforce-eager", "--kv-cache-memory-bytes", str(256 * 1024 * 1024), "--dtype", "float32")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_metrics(text: str) -> dict[str, float]:
    """`name{labels}` -> value, labels kept verbatim as Prometheus prints them (sorted by name)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log_path: Path
    workdir: Path

    @property
    def target(self) -> str:
        return f"localhost:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def metrics_text(self) -> str:
        with urlopen(f"{self.http}/metrics", timeout=10) as r:
            return r.read().decode()

    def metrics(self) -> dict[str, float]:
        return parse_metrics(self.metrics_text())

    def metric(self, name: str) -> float:
        return self.metrics().get(name, 0.0)

    def http_status(self, path: str) -> int:
        try:
            with urlopen(f"{self.http}{path}", timeout=5) as r:
                return r.status
        except URLError as e:
            code = getattr(e, "code", None)
            if code is None:
                raise
            return int(code)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def engine_core_pids(self) -> list[int]:
        """The vLLM engine-core process(es) under this server (process title 'VLLM::EngineCore')."""
        import psutil

        return [
            p.pid
            for p in psutil.Process(self.proc.pid).children(recursive=True)
            if "EngineCore" in " ".join(_safe_cmdline(p)) or "EngineCore" in _safe_name(p)
        ]

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_tree(self.proc.pid)
                self.proc.wait(timeout=10)
        return self.proc.returncode


def _safe_cmdline(p: object) -> list[str]:
    try:
        return p.cmdline()  # type: ignore[attr-defined, no-any-return]
    except Exception:
        return []


def _safe_name(p: object) -> str:
    try:
        return p.name()  # type: ignore[attr-defined, no-any-return]
    except Exception:
        return ""


def _kill_tree(pid: int) -> None:
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        parent = psutil.Process(pid)
        for child in parent.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        parent.kill()


def launch_server(model: Path, workdir: Path, *flags: str) -> ServerProcess:
    """Starts grok-server without waiting for it (tests of the loading phase watch it come up)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        # Each run keeps its ZeroMQ sockets and compile caches to itself.
        "TMPDIR": str(workdir),
        "VLLM_CACHE_ROOT": str(workdir / "vllm-cache"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    log_path = workdir / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "grok_server.server.main",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics-host",
        "127.0.0.1",
        "--metrics-port",
        str(metrics_port),
        *BASE_FLAGS,
        *flags,
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    return ServerProcess(proc, port, metrics_port, log_path, workdir)


def health_status(channel: grpc.Channel, service: str = "") -> str:
    stub = health_pb2_grpc.HealthStub(channel)
    resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def wait_serving(
    server: ServerProcess, channel: grpc.Channel | None = None, timeout: float = SERVER_START_TIMEOUT
) -> None:
    own = channel is None
    channel = channel or grpc.insecure_channel(server.target)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise RuntimeError(
                    f"grok-server exited with {server.proc.returncode}:\n{server.log()[-5000:]}"
                )
            try:
                if health_status(channel) == "SERVING":
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"grok-server not SERVING after {timeout} s:\n{server.log()[-5000:]}")
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
