"""grok_router.tls.CertificateFiles without a router process: what a new HTTPS handshake on its SSLContext is
served after a renewal, over a socket pair (no port, no wait on a duration)."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from grok_router.tls import CertificateFiles


def pair(cn: str, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> tuple[bytes, bytes]:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def served(context: ssl.SSLContext, server_hostname: str | None = "localhost") -> str:
    """The common name of the certificate a new handshake on `context` serves."""
    server_end, client_end = socket.socketpair()
    failed: list[BaseException] = []

    def serve() -> None:
        try:
            with context.wrap_socket(server_end, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError) as err:
            failed.append(err)

    thread = threading.Thread(target=serve)
    thread.start()
    client = ssl.create_default_context()
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    try:
        with client.wrap_socket(client_end, server_hostname=server_hostname) as tls:
            der = tls.getpeercert(binary_form=True)
            tls.sendall(b"x")
    finally:
        thread.join(60)
    assert der is not None, failed
    (cn,) = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cn.value)


def write(folder: Path, cert: bytes, key: bytes) -> None:
    (folder / "tls.crt").write_bytes(cert)
    (folder / "tls.key").write_bytes(key)


def test_a_renewal_with_another_key_type_is_what_new_handshakes_get(tmp_path: Path) -> None:
    # cert-manager's privateKey.algorithm changed (ECDSA to RSA, or back): the old certificate must not stay
    # in the served context beside the new one (OpenSSL keeps one pair per key type in a context).
    write(tmp_path, *pair("first-ec", ec.generate_private_key(ec.SECP256R1())))
    files = CertificateFiles(tmp_path / "tls.crt", tmp_path / "tls.key")
    assert files.check()
    assert served(files.http) == "first-ec"
    write(tmp_path, *pair("renewed-rsa", rsa.generate_private_key(65537, 2048)))
    assert files.check()
    assert served(files.http) == "renewed-rsa"
    assert served(files.http, server_hostname=None) == "renewed-rsa"  # a caller by IP address sends no SNI
    write(tmp_path, *pair("renewed-ec", ec.generate_private_key(ec.SECP256R1())))
    assert files.check()
    assert served(files.http) == "renewed-ec"


def test_files_replaced_between_the_poll_and_the_load_never_break_what_is_served(tmp_path: Path) -> None:
    first = pair("first", ec.generate_private_key(ec.SECP256R1()))
    write(tmp_path, *first)
    files = CertificateFiles(tmp_path / "tls.crt", tmp_path / "tls.key")
    assert files.check()
    renewed = pair("renewed", ec.generate_private_key(ec.SECP256R1()))
    write(tmp_path, *renewed)
    changed, read = files.poll()
    assert changed
    # Rewritten in place again before the change is applied (not the kubelet's atomic swap): a key that
    # is not the certificate's. What was read and checked is served; what is served is never half a pair.
    (tmp_path / "tls.key").write_bytes(first[1])
    files.on_change(read)
    assert served(files.http) == "renewed"
