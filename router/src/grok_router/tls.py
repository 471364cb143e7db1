"""TLS at the front door: the router's gRPC and HTTP ports serve the certificate in --tls-cert/--tls-key (a
mounted `kubernetes.io/tls` Secret's tls.crt and tls.key) and take a renewed one without a restart.

The files are polled like the keys folder (keyfiles.py: inodes, sizes, mtimes, links followed, the kubelet's
`..data` swap included). A change that reads as a matching certificate and key is handed to both ports: the
HTTP port's listening SSLContext hands each new handshake to the newest pair's own SSLContext (its
sni_callback, which OpenSSL runs for every ClientHello, with or without SNI), and gRPC's certificate fetcher
returns the pair at the next handshake; connections open keep theirs. The listening context never loads a
pair itself: loading in place would keep an older pair of another key type beside the new one (OpenSSL holds
one per type, and an ECDSA-preferring client would still get the old certificate), and a load that fails
half-way would leave it with a certificate and no key. A pair that does not match (a swap caught half-way, a
wrong key) is not used: the ports keep the last good one, and the next poll tries again.
"""

from __future__ import annotations

import logging
import ssl
import threading
from pathlib import Path

import grpc

from grok_router.keyfiles import file_state

log = logging.getLogger("grok_router.tls")

Pair = tuple[ssl.SSLContext, bytes, bytes]  # a server context with the pair loaded, and its PEM bytes


def _context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context


def read_pair(cert: Path, key: Path) -> Pair:
    """The certificate and key, checked to be a pair (OSError, ssl.SSLError or ValueError if not)."""
    # Through the links to the files themselves: a kubelet swap between the two reads is then seen as a
    # mismatch (or a missing file), not as half of each.
    cert, key = cert.resolve(strict=True), key.resolve(strict=True)
    cert_pem, key_pem = cert.read_bytes(), key.read_bytes()
    context = _context()
    context.load_cert_chain(cert, key)
    # Files rewritten in place (not the kubelet's swap) while read: what gRPC gets must be what was checked.
    if cert.read_bytes() != cert_pem or key.read_bytes() != key_pem:
        raise ValueError("rewritten while being read")
    return context, cert_pem, key_pem


class CertificateFiles:
    """The router's certificate and key files; `poll`/`on_change`/`check` as keyfiles.Watched's."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert, self.key = cert, key
        self.path = cert  # named in poll_forever's log
        self.http = _context()  # the HTTP port's: holds no pair, hands each handshake the current one's
        self.http.sni_callback = self._select
        self._http_current: ssl.SSLContext | None = None
        self.signature: object = None
        self._refused: object = None  # the signature last found unusable (said once)
        self._lock = threading.Lock()
        self._grpc_current: grpc.ServerCertificateConfiguration | None = None
        self._grpc_pending: grpc.ServerCertificateConfiguration | None = None
        self.loads = 0

    def _signature(self) -> object:
        return tuple(file_state(p) for p in (self.cert, self.key, self.cert.parent / "..data",
                                        self.key.parent / "..data"))

    def poll(self) -> tuple[bool, object]:
        """(True, a Pair) when the files changed since the last poll and hold a usable pair."""
        signature = self._signature()
        if signature == self.signature:
            return False, None
        try:
            pair = read_pair(self.cert, self.key)
        except (OSError, ssl.SSLError, ValueError) as err:
            if signature != self._refused:
                self._refused = signature
                log.warning("the TLS certificate %s and key %s are not a usable pair (%s): %s", self.cert,
                            self.key, err, "still serving the last good one" if self.loads else "not serving")
            return False, None
        self.signature = signature
        return True, pair

    def on_change(self, pair: object) -> None:
        context, cert_pem, key_pem = pair  # type: ignore[misc]
        self._http_current = context
        config = grpc.ssl_server_certificate_configuration([(key_pem, cert_pem)])
        with self._lock:
            self._grpc_current = self._grpc_pending = config
        self.loads += 1
        log.info("serving the TLS certificate from %s (load %d)", self.cert, self.loads)

    def check(self) -> bool:
        changed, value = self.poll()
        if changed:
            self.on_change(value)
        return changed

    def _select(self, connection: ssl.SSLObject, server_name: str | None, listening: ssl.SSLContext) -> None:
        """The HTTP port's handshakes: served from the newest good pair's context (one attribute read)."""
        current = self._http_current
        if current is not None:
            connection.context = current

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC asks at each new handshake: the newest pair once, then None (no change)."""
        with self._lock:
            config, self._grpc_pending = self._grpc_pending, None
        return config

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """After a first successful check."""
        with self._lock:
            initial, self._grpc_pending = self._grpc_current, None
        assert initial is not None, "check() the files first"
        return grpc.dynamic_ssl_server_credentials(initial, self._fetch, require_client_authentication=False)
