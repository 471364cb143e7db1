"""Which replica a request goes to (pure): prefix affinity by rendezvous hashing, bounded by load.

A request's prompt prefix (its first whole blocks of token ids, or of UTF-8 bytes for a text prompt) is a key;
every replica gets a score hash(key, replica name) and the replicas are ranked by it (rendezvous hashing).
The same prefix therefore prefers the same replica on every router replica that sees the same set of Ready
pods, and a replica joining or leaving moves only the keys it wins or held. The preferred replica is taken
unless its load would pass a bound over the average ("consistent hashing with bounded loads"); the next in
the ranking is tried then, so a hot prefix spills onto a stable second choice instead of piling up. Requests
without a whole block of prompt go to the least loaded replica (ties in turn, so one client's sequential
calls still spread).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# vLLM's prefix cache works on blocks of 16 tokens: a prefix shorter than a block is never reused.
TOKEN_BLOCK = 16
# Text prompts are keyed before tokenization (the router has no tokenizer): ~4 bytes per token for text.
TEXT_BLOCK = TOKEN_BLOCK * 4

AFFINITY = "affinity"  # the prefix's preferred replica
SPILL = "affinity_overloaded"  # the prefix's preferred replica was over the bound: the next in its ranking
LOAD = "load"  # no prefix key: the least loaded replica


@dataclass(frozen=True)
class Candidate:
    """A Ready replica as the picker sees it: a stable name and its current load (requests in flight)."""

    name: str
    load: float


@dataclass(frozen=True)
class Choice:
    name: str
    reason: str


def prefix_key(token_ids: Sequence[int] | None, text: str | None, blocks: int) -> bytes | None:
    """The first `blocks` whole blocks of the prompt (fewer if the prompt is shorter), or None when the prompt
    has not one whole block: such prompts share nothing worth keeping warm."""
    if blocks <= 0:
        return None
    if token_ids:
        whole = min(len(token_ids) // TOKEN_BLOCK, blocks) * TOKEN_BLOCK
        if whole == 0:
            return None
        return b"t" + b",".join(str(t).encode() for t in token_ids[:whole])
    data = (text or "").encode()
    whole = min(len(data) // TEXT_BLOCK, blocks) * TEXT_BLOCK
    return b"s" + data[:whole] if whole else None


def _score(key: bytes, name: str) -> int:
    return int.from_bytes(hashlib.blake2b(key + b"\0" + name.encode(), digest_size=8).digest(), "big")


def ranking(key: bytes, names: Iterable[str]) -> list[str]:
    """Replica names from the most to the least preferred for this key (rendezvous hashing)."""
    return sorted(names, key=lambda n: (-_score(key, n), n))


def load_bound(loads: Sequence[float], balance: float) -> float:
    """The most load a replica may carry, counting the new request, and still be chosen for affinity:
    (1 + balance) x the average load with the new request included, and never below 1 so an idle set of
    replicas always honours affinity."""
    average = (sum(loads) + 1) / len(loads)
    return max(1.0, math.ceil(average * (1 + balance)))


def pick(candidates: Sequence[Candidate], key: bytes | None, balance: float, turn: int = 0) -> Choice | None:
    """The replica for one request, or None when there is none. `turn` breaks ties between equally loaded
    replicas in rotation (a counter the caller increments per request)."""
    if not candidates:
        return None
    if key is not None:
        by_name = {c.name: c for c in candidates}
        bound = load_bound([c.load for c in candidates], balance)
        order = ranking(key, by_name)
        for position, name in enumerate(order):
            if by_name[name].load + 1 <= bound:
                return Choice(name, AFFINITY if position == 0 else SPILL)
        # All over the bound (cannot happen with balance ≥ 0, kept for safety): the least loaded.
    least = min(c.load for c in candidates)
    tied = sorted(c.name for c in candidates if c.load == least)
    return Choice(tied[turn % len(tied)], LOAD)
