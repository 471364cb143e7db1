"""The operator's modules form layers: the API types at the bottom, then planning, the manifests and observing
(pure), scaling, and the control loop on top; nothing imports upward and no two modules import each other
round a circle. A newcomer finds a change's folder by what it is about."""

import ast
from pathlib import Path

import grok_operator
from tests.importgraph import assert_no_cycles

ROOT = Path(grok_operator.__file__).parent
LAYERS = {"api": 0, "plan": 1, "manifests": 2, "observe": 2, "scale": 3, "control": 4, "handlers": 5,
          "main": 6}


def _modules() -> dict[str, set[str]]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(p for p in parts if p != "__init__")
        imports = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("grok_operator"):
                module = node.module.removeprefix("grok_operator").lstrip(".")
                imports |= {f"{module}.{a.name}".lstrip(".") for a in node.names} | {module}
        found[name] = imports
    return {name: {i for i in imports if i in found and i} for name, imports in found.items()}


def _layer(module: str) -> int:
    return LAYERS[module.split(".", maxsplit=1)[0]]


def test_every_module_is_in_a_layer_and_imports_only_its_own_or_lower_ones():
    modules = _modules()
    assert {m.split(".")[0] for m in modules if m} <= set(LAYERS)
    upward = [(m, i) for m, imports in modules.items() if m for i in imports if _layer(i) > _layer(m)]
    assert upward == []


def test_no_import_cycles():
    assert_no_cycles(_modules())


def test_no_operator_file_is_over_400_lines():
    long = {p.name: n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
