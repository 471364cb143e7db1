"""vLLM engine settings as grok-server takes them: `--engine-arg KEY=VALUE`, VALUE read as JSON when it is
JSON (`true`, `2048`, `{"backend": "TRITON_ATTN"}`) and as a bare string otherwise (`bfloat16`)."""

from __future__ import annotations

import json
from typing import Any

FLAG = "--engine-arg"


def parse_engine_arg(text: str) -> tuple[str, Any]:
    """KEY=VALUE as (key with underscores, value). Raises ValueError for text without a KEY=."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.replace("-", "_"), value


def engine_args_in(argv: list[str]) -> dict[str, Any]:
    """The engine settings a grok-server command line carries (`--engine-arg K=V` and `--engine-arg=K=V`;
    a later one wins, as in grok-server). Raises ValueError naming a malformed one."""
    found: dict[str, Any] = {}
    for i, word in enumerate(argv):
        if word == FLAG:
            if i + 1 == len(argv):
                raise ValueError(f"{FLAG} at the end of the arguments, without KEY=VALUE")
            key, value = parse_engine_arg(argv[i + 1])
        elif word.startswith(FLAG + "="):
            key, value = parse_engine_arg(word[len(FLAG) + 1:])
        else:
            continue
        found[key] = value
    return found
