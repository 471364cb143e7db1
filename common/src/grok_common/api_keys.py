"""API keys at the router, as a Kubernetes Secret holds them (pure): one data key per API key, named after its
tenant (`team-a`, or `team-a.<anything>` for a second key while rotating), the value the key itself.

The operator checks a GrokDeployment's Secret with these rules before its router mounts it; the router reads
the mounted files by the same rules. Problems name the data key, never the key's value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

TENANT = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_TENANT_CHARS = 63
MAX_KEY_BYTES = 4096


def tenant_of(data_key: str) -> str | None:
    """The tenant a data key names (its part before the first dot), or None when that is no tenant name."""
    tenant = data_key.split(".", 1)[0]
    return tenant if len(tenant) <= MAX_TENANT_CHARS and TENANT.match(tenant) else None


def key_problem(value: bytes) -> str | None:
    """Why a value cannot be an API key, or None (surrounding whitespace is not part of it)."""
    key = value.strip()
    if not key:
        return "is empty"
    if len(key) > MAX_KEY_BYTES:
        return f"is longer than {MAX_KEY_BYTES} bytes"
    if not all(0x21 <= b <= 0x7E for b in key):
        return "has characters other than printable ASCII (a key travels in an HTTP header)"
    return None


def read_keys(entries: Mapping[str, bytes]) -> tuple[dict[str, list[bytes]], list[str]]:
    """(API keys by tenant, a problem per entry that is not one), from data key -> value."""
    keys: dict[str, list[bytes]] = {}
    problems = []
    for name, value in sorted(entries.items()):
        tenant = tenant_of(name)
        problem = None
        if tenant is None:
            problem = (f"{name!r}: its name does not start with a tenant name (lowercase letters, digits and "
                       f"'-', at most {MAX_TENANT_CHARS}, then an optional '.suffix')")
        elif (why := key_problem(value)) is not None:
            problem = f"{name!r}: the key {why}"
        if problem is not None:
            problems.append(problem)
            continue
        assert tenant is not None
        keys.setdefault(tenant, []).append(value.strip())
    return keys, problems
