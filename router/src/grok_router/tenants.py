"""API keys of tenants (pure): a keys folder's files to keys, and a caller's `authorization` to its tenant.

The folder is a mounted Kubernetes Secret, one file per data key. A file's tenant is its name up to the first
`.` (`team-a`, `team-a.2026-12` and `team-a.old` are three keys of tenant team-a: rotation). Files whose name
starts with `.` (the kubelet's `..data` links) are not keys. A file that cannot be a key is skipped, with a
warning that names the file and never its content.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

TENANT = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
MAX_TENANT = 63
MAX_KEY_BYTES = 4096
UNKNOWN = "unknown"  # the tenant label of calls without a valid key
ASK = "send 'authorization: Bearer <API key>' (HTTP: the Authorization header; OpenAI clients: api_key=...)"


def tenant_of(file_name: str) -> str | None:
    """The tenant a key file's name gives, or None when it gives no valid tenant name."""
    tenant = file_name.split(".", 1)[0]
    if len(tenant) > MAX_TENANT or not TENANT.fullmatch(tenant) or tenant == UNKNOWN:
        return None
    return tenant


def key_problem(content: bytes) -> tuple[bytes, str | None]:
    """The key a file holds (surrounding whitespace stripped), and why it cannot be a key (None: it can)."""
    key = content.strip()
    if not key:
        return key, "empty"
    if len(key) > MAX_KEY_BYTES:
        return key, f"longer than {MAX_KEY_BYTES} bytes"
    if not all(0x21 <= b <= 0x7E for b in key):
        return key, "not printable ASCII (spaces, control characters or non-ASCII bytes)"
    return key, None


@dataclass(frozen=True)
class KeySet:
    """The accepted keys, each with its tenant; `skipped`: file name -> why it is not a key."""

    keys: tuple[tuple[bytes, str], ...] = ()
    skipped: Mapping[str, str] = field(default_factory=dict)

    @property
    def tenants(self) -> frozenset[str]:
        return frozenset(t for _, t in self.keys)

    def authenticate(self, authorization: str | bytes | None) -> tuple[str | None, str]:
        """(tenant, "") for a valid `Bearer <key>`, else (None, why not, saying what to send)."""
        if not self.keys:
            return None, "the router has no API keys configured: every call is refused until keys are added"
        if authorization is None:
            return None, f"missing credentials: {ASK}"
        if isinstance(authorization, str):
            authorization = authorization.encode("utf-8", "surrogateescape")
        scheme, _, presented = authorization.strip().partition(b" ")
        presented = presented.strip()
        if scheme.lower() != b"bearer" or not presented:
            return None, f"malformed credentials: {ASK}"
        # Constant time: compared with every accepted key, no early exit, whichever matches.
        found: str | None = None
        for key, tenant in self.keys:
            if hmac.compare_digest(presented, key):
                found = tenant
        if found is None:
            return None, f"invalid API key: {ASK}"
        return found, ""


def parse_keys(files: Mapping[str, bytes]) -> KeySet:
    """The keys of a folder's regular files (name -> content; names starting with `.` already left out)."""
    keys: list[tuple[bytes, str]] = []
    skipped: dict[str, str] = {}
    for name in sorted(files):
        tenant = tenant_of(name)
        if tenant is None:
            skipped[name] = (f"the name does not give a tenant: the part before the first '.' must match "
                             f"{TENANT.pattern} (at most {MAX_TENANT} characters, not {UNKNOWN!r})")
            continue
        key, problem = key_problem(files[name])
        if problem is not None:
            skipped[name] = f"the key is {problem}"
            continue
        keys.append((key, tenant))
    return KeySet(tuple(keys), skipped)
