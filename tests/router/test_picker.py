"""The router's choice of replica (pure): prefix keys, rendezvous ranking, the load bound."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from grok_router import picker
from grok_router.picker import AFFINITY, LOAD, SPILL, Candidate, pick, prefix_key, ranking


def test_prefix_keys_are_whole_blocks_of_the_prompt() -> None:
    assert prefix_key(list(range(15)), None, 8) is None  # under one block: nothing worth keeping warm
    assert prefix_key(list(range(16)), None, 8) == prefix_key([*range(16), 99], None, 8)
    assert prefix_key(list(range(40)), None, 2) == prefix_key([*range(32), *[7] * 9], None, 2)
    assert prefix_key(list(range(40)), None, 2) != prefix_key([1, *range(1, 40)], None, 2)
    text = "x" * picker.TEXT_BLOCK * 3
    assert prefix_key(None, text + "a", 2) == prefix_key(None, text + "b", 2)
    assert prefix_key(None, "short", 8) is None
    assert prefix_key(None, text, 0) is None  # affinity off
    assert prefix_key([5] * 16, None, 1) != prefix_key(None, "5" * 64, 1)  # ids and text never collide


@given(st.binary(min_size=1), st.lists(st.text(min_size=1, max_size=8), min_size=2, max_size=8, unique=True))
def test_ranking_is_the_same_for_any_order_and_stable_when_others_leave(key: bytes, names: list[str]) -> None:
    order = ranking(key, names)
    assert ranking(key, reversed(names)) == order  # every router replica makes the same choice
    survivors = [n for n in names if n != order[-1]]
    assert ranking(key, survivors)[0] == order[0]  # a replica leaving moves only the keys it held


def test_rendezvous_spreads_keys_evenly() -> None:
    names = ["a", "b", "c"]
    wins = Counter(ranking(f"prefix {i}".encode(), names)[0] for i in range(3000))
    assert all(800 < wins[n] < 1200 for n in names), wins


def test_affinity_holds_under_even_load_and_spills_to_the_next_choice() -> None:
    key = b"a long shared prefix"
    first, second = ranking(key, ["r1", "r2"])
    idle = [Candidate("r1", 0), Candidate("r2", 0)]
    assert pick(idle, key, 0.5) == picker.Choice(first, AFFINITY)
    loads = {first: 0, second: 0}
    reasons = []
    for _ in range(4):  # requests of one prefix arriving while the earlier ones still run
        choice = pick([Candidate(n, v) for n, v in loads.items()], key, 0.5)
        assert choice is not None
        loads[choice.name] += 1
        reasons.append((choice.name, choice.reason))
    assert reasons[:3] == [(first, AFFINITY)] * 3
    assert reasons[3] == (second, SPILL)  # 4 > (1 + 0.5) x the average: the next in the prefix's ranking


def test_without_a_prefix_the_least_loaded_takes_it_and_ties_rotate() -> None:
    assert pick([Candidate("a", 3), Candidate("b", 1)], None, 0.5) == picker.Choice("b", LOAD)
    even = [Candidate("a", 0), Candidate("b", 0)]
    assert [pick(even, None, 0.5, turn).name for turn in range(4)] == ["a", "b", "a", "b"]
    assert pick([], None, 0.5) is None


@given(st.lists(st.integers(0, 50), min_size=1, max_size=6), st.binary(min_size=1),
       st.floats(0, 3, allow_nan=False))
def test_a_choice_never_exceeds_the_bound(loads: list[int], key: bytes, balance: float) -> None:
    candidates = [Candidate(f"r{i}", v) for i, v in enumerate(loads)]
    choice = pick(candidates, key, balance)
    assert choice is not None
    chosen = next(c for c in candidates if c.name == choice.name)
    if choice.reason != LOAD:
        assert chosen.load + 1 <= picker.load_bound(loads, balance)
    else:
        assert chosen.load == min(loads)
