"""Manifests as the text `kubectl apply -f -` reads."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any


def documents(manifests: Iterable[dict[str, Any]]) -> str:
    """Each manifest a JSON document. Not PyYAML: it writes YAML 1.1, where '1e5' or '0o17' need no quotes,
    and kubectl's reader takes those for numbers."""
    return "".join(f"---\n{json.dumps(manifest)}\n" for manifest in manifests)
