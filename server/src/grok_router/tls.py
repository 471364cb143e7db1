"""TLS at the front door: the router's gRPC and HTTP ports serve the certificate in --tls-cert/--tls-key (a
mounted `kubernetes.io/tls` Secret's tls.crt and tls.key) and take a renewed one without a restart.

The files are polled like the keys folder (keyfiles.py: inodes, sizes, mtimes, links followed, the kubelet's
`..data` swap included). A change that reads as a matching certificate and key is handed to both ports: the
HTTP port's SSLContext loads it in place (new handshakes use the context's current chain; connections open
keep theirs), and gRPC's certificate fetcher returns it at the next handshake. A pair that does not match
(a swap caught half-way, a wrong key) is not used: the ports keep the last good one, and the next poll tries
again.
"""

from __future__ import annotations

import logging
import ssl
import threading
from pathlib import Path

import grpc

from grok_router.keyfiles import file_state

log = logging.getLogger("grok_router.tls")

Pair = tuple[Path, Path, bytes, bytes]  # resolved certificate and key paths, and their PEM bytes


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
    _context().load_cert_chain(cert, key)
    return cert, key, cert_pem, key_pem


class CertificateFiles:
    """The router's certificate and key files; `poll`/`on_change`/`check` as keyfiles.Watched's."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert, self.key = cert, key
        self.path = cert  # named in poll_forever's log
        self.http = _context()
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
        cert, key, cert_pem, key_pem = pair  # type: ignore[misc]
        try:
            self.http.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as err:  # replaced again since poll read it: the next poll retries
            self.signature = None
            log.warning("reloading the TLS certificate %s failed (%s); retrying", cert, err)
            return
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
