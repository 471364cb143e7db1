"""TLS at the front door for real: a grok-router process serving its gRPC and HTTP ports with a self-signed
certificate from a folder written as the kubelet writes a mounted `kubernetes.io/tls` Secret; the certificate
is renewed (a new `..data`, swapped atomically) and new connections get the new one from the same process.

No server behind it (nothing listens at its replica): what is asked here, the router answers itself. Every
wait is on a condition with a generous deadline, never on a duration.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grok_devcluster.local import free_port, wait
from tests.router.keyslib import write_secret


def self_signed(cn: str) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for localhost and 127.0.0.1, signed by itself."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


@dataclass
class TLSRouter:
    proc: subprocess.Popen[bytes]
    port: int
    http_port: int
    log: Path

    def https_certificate(self, trusted: bytes) -> bytes:
        """The certificate a new HTTPS connection is served (DER), verified against `trusted` (PEM)."""
        context = ssl.create_default_context(cadata=trusted.decode())
        with socket.create_connection(("127.0.0.1", self.http_port), timeout=30) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.getpeercert(binary_form=True) or b""

    def https_get(self, path: str, trusted: bytes) -> tuple[int, bytes]:
        context = ssl.create_default_context(cadata=trusted.decode())
        with urllib.request.urlopen(f"https://localhost:{self.http_port}{path}", timeout=60,
                                    context=context) as answer:
            return answer.status, answer.read()

    def grpc_health(self, trusted: bytes) -> str:
        """Health over a new gRPC connection that trusts only `trusted`: it answers only if that is what the
        router serves."""
        credentials = grpc.ssl_channel_credentials(root_certificates=trusted)
        # A channel of its own (no shared subchannel): a new connection, a new handshake.
        with grpc.secure_channel(f"localhost:{self.port}", credentials,
                                 options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


@pytest.fixture
def tls_folder(tmp_path: Path) -> Path:
    return tmp_path / "tls"


@pytest.fixture
def first() -> tuple[bytes, bytes]:
    return self_signed("grok-router-first")


@pytest.fixture
def router(tmp_path: Path, tls_folder: Path, first: tuple[bytes, bytes]) -> Iterator[TLSRouter]:
    write_secret(tls_folder, {"tls.crt": first[0], "tls.key": first[1]})
    port, http_port = free_port(), free_port()
    log = tmp_path / "router.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "grok_router.main", "--host", "127.0.0.1", "--port", str(port),
         "--http-port", str(http_port), "--model-name", "tiny", "--hold-timeout-seconds", "0",
         "--replica", f"127.0.0.1:{free_port()}", "--api-keys-poll-seconds", "0.2",
         "--tls-cert", str(tls_folder / "tls.crt"), "--tls-key", str(tls_folder / "tls.key")],
        stdout=log.open("wb"), stderr=subprocess.STDOUT)
    r = TLSRouter(proc, port, http_port, log)
    try:
        wait(lambda: proc.poll() is None and r.https_get("/healthz", first[0])[0] == 200, 120,
             f"the router to serve HTTPS (log: {log})", transient=(OSError,))
        yield r
    finally:
        proc.terminate()
        proc.wait(60)
    assert proc.returncode == 0, log.read_text()[-3000:]


def test_both_ports_serve_tls_and_a_renewed_certificate_is_served_without_a_restart(
    router: TLSRouter, tls_folder: Path, first: tuple[bytes, bytes]
) -> None:
    pid = router.proc.pid
    # Both ports speak TLS with the Secret's certificate, and only TLS.
    assert router.https_certificate(first[0]) == der(first[0])
    status, body = router.https_get("/v1/models", first[0])
    assert status == 200 and json.loads(body)["data"][0]["id"] == "tiny"
    assert router.grpc_health(first[0]) == "SERVING"
    with pytest.raises(OSError):  # plaintext HTTP to the TLS port: no answer in HTTP
        urllib.request.urlopen(f"http://127.0.0.1:{router.http_port}/healthz", timeout=30).read()

    renewed = self_signed("grok-router-renewed")
    write_secret(tls_folder, {"tls.crt": renewed[0], "tls.key": renewed[1]})
    both = first[0] + renewed[0]
    wait(lambda: router.https_certificate(both) == der(renewed[0]), 120,
         "a new HTTPS connection to be served the renewed certificate", transient=(OSError,))
    wait(lambda: router.grpc_health(renewed[0]) == "SERVING", 120,
         "a new gRPC connection to be served the renewed certificate", transient=(grpc.RpcError,))
    status, _ = router.https_get("/v1/models", renewed[0])
    assert status == 200
    assert router.proc.pid == pid and router.proc.poll() is None


def test_the_openai_package_over_tls_as_the_docs_show(router: TLSRouter, first: tuple[bytes, bytes],
                                                      tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_bytes(first[0])
    client = openai.OpenAI(base_url=f"https://localhost:{router.http_port}/v1", api_key="any", max_retries=0,
                           timeout=60, http_client=openai.DefaultHttpxClient(
                               verify=ssl.create_default_context(cafile=str(ca))))
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_a_renewal_that_is_not_a_pair_keeps_the_last_good_certificate(
    router: TLSRouter, tls_folder: Path, first: tuple[bytes, bytes]
) -> None:
    other = self_signed("grok-router-other")
    write_secret(tls_folder, {"tls.crt": other[0], "tls.key": first[1]})  # a key that is not the cert's
    wait(lambda: "not a usable pair" in router.log.read_text(), 120, "the router to say the pair is refused")
    assert router.https_certificate(first[0]) == der(first[0])
    assert router.grpc_health(first[0]) == "SERVING"
    write_secret(tls_folder, {"tls.crt": other[0], "tls.key": other[1]})  # fixed: taken
    wait(lambda: router.https_certificate(first[0] + other[0]) == der(other[0]), 120,
         "the fixed pair to be served", transient=(OSError,))
    assert router.proc.poll() is None
