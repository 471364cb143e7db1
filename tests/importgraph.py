"""Checks on an import graph (module -> the modules of ours it imports), shared by the layer tests."""

from __future__ import annotations


def assert_no_cycles(modules: dict[str, set[str]]) -> None:
    """Fails naming the first cycle found (a -> b -> ... -> a), depth first in sorted order."""
    state: dict[str, str] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for i in sorted(modules[m]):
            assert state.get(i) != "open", " -> ".join([*path, i])
            if i not in state:
                visit(i, [*path, i])
        state[m] = "done"

    for m in sorted(modules):
        if m not in state:
            visit(m, [m])
