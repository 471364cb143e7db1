"""The server, router, rpc and common packages keep their shape: no import cycles, no file over 400 lines,
grok_common at the bottom (it imports nothing of ours), grok_rpc beside it (the generated stubs, package
`grok`, and the gRPC helpers server and router share: nothing of grok_server), and the router free of vLLM
and of grok_server. The operator's own layers are tests/operator/test_layers.py.

Each package is found where Python imports it from (its `__file__`), so the checks follow a package that
moves to another distribution."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from tests.importgraph import assert_no_cycles

PACKAGES = ("grok_common", "grok_rpc", "grok_server", "grok_router")
# The router's image installs grok-router, grok-rpc and grok-common only (no grok-server, no vLLM).
ROUTER_MAY_REACH = {"grok_common", "grok_rpc", "grok_router", "grok"}
HEAVY = ("vllm", "torch")
MAX_LINES = 400


def _root(package: str) -> Path:
    return Path(importlib.import_module(package).__file__).parent  # type: ignore[arg-type]


def _files(package: str) -> dict[str, Path]:
    """Every module of `package` by its dotted name (a package by its own name, as Python names it)."""
    root = _root(package)
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join([package, *(p for p in parts if p != "__init__")])] = path
    return found


def _imported(path: Path) -> set[str]:
    """Every module name `path` imports, at the top or inside a function (`from a import b`: a and a.b)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"  # the graph below reads absolute names only
            assert node.module is not None
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def _graph(packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the modules of `packages` it imports."""
    files = {name: path for package in packages for name, path in _files(package).items()}
    return {name: _imported(path) & set(files) - {name} for name, path in files.items()}


def _top(name: str) -> str:
    return name.split(".", maxsplit=1)[0]


def _ours(name: str) -> bool:
    return _top(name) == "grok" or _top(name).startswith("grok_")


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles(package: str) -> None:
    assert_no_cycles(_graph((package,)))


@pytest.mark.parametrize("package", PACKAGES)
def test_no_file_is_over_400_lines(package: str) -> None:
    long = {name: n for name, path in _files(package).items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_grok_common_imports_nothing_of_ours() -> None:
    ours = {(name, i) for name, path in _files("grok_common").items() for i in _imported(path)
            if _ours(i) and not i.startswith("grok_common")}
    assert ours == set()


def test_grok_rpc_imports_only_the_stubs_and_grok_common() -> None:
    ours = {(name, i) for name, path in _files("grok_rpc").items() for i in _imported(path)
            if _ours(i) and _top(i) not in ("grok_rpc", "grok_common", "grok")}
    assert ours == set()


def test_the_router_reaches_neither_grok_server_nor_vllm() -> None:
    files = {name: path for package in PACKAGES for name, path in _files(package).items()}
    reached = set(_files("grok_router"))  # and all they import of our packages, at any depth
    todo = [i for name in reached for i in _imported(files[name]) if i in files]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo += [i for i in _imported(files[name]) if i in files]
    imported = {i for name in reached for i in _imported(files[name])}
    assert {_top(i) for i in imported if _ours(i)} <= ROUTER_MAY_REACH
    assert {i for i in imported if _top(i) in HEAVY} == set()
