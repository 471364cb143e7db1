"""The documentation's commands and links, checked for what can be checked here, in a few seconds and
without a cluster.

Pages: README.md, docs/*.md, hack/devcluster/README.md, charts/grok-operator/README.md, examples/README.md.
Commands: every line of their fenced `sh`/`shell`/`bash`/`console` blocks, and every inline code span that
starts with a command this repository provides (`make`, a `grok-*` CLI, `python bench/...`,
`kubectl apply -f`, `helm install`, `docker build -f`).

What is checked, for real:
- `make TARGET VAR=...`: the target exists in the Makefile, and the Makefile reads the variable;
- a project CLI (`grok-server`, `grok-client`, `grok-router`, `grok-devcluster`, `grok-fetch`, ...) and a
  `python bench/x.py` script: its own argparse parser (taken from its `main()`, nothing run) has each
  subcommand and each flag the docs use, and each value the docs give a flag with fixed choices is one of
  them (`a|b` alternatives and `[optional]` brackets as written in the docs are expanded);
- every repository path named in a command or an inline code span exists (`bench/x.py`, `examples/y.yaml`,
  `hack/...`, `charts/...`, and module paths such as `grok_devcluster/images.py` under a `src/` folder);
- `kubectl apply -f` of a repository file or folder: every YAML document in it parses and has a kind;
- `helm install ... CHART --set key=...`: the chart exists and `values.yaml` has the key;
- `docker build -f FILE`: the Dockerfile exists;
- every bare `--flag` in an inline code span is a flag of one of the project's CLIs or of an external tool
  the docs name (kubectl, helm);
- every relative link (`[x](docs/y.md#anchor)`) names an existing file and, for a page, one of its headings;
- the README stays at most 12 KB, and the troubleshooting entries it keeps are those of
  docs/troubleshooting.md, word for word.

What cannot be checked here: the commands that need a real cluster, registry or GPU (`kubectl get/describe/
logs/scale`, `helm install` itself, `docker build` itself, `grpcurl`, `curl` to a Service, `grok-client`
against a served model), shell built-ins and host tools (`export`, `install -d`, `taskset`). `make demo` and
`make test` themselves run in tests/e2e/test_demo.py and CI.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import re
import shlex
import sys
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "hack/devcluster/README.md",
         ROOT / "charts/grok-operator/README.md", ROOT / "examples/README.md"]
SHELL_BLOCKS = {"sh", "shell", "bash", "console"}
CLIS = {ep.name: ep for ep in importlib.metadata.entry_points(group="console_scripts")
        if ep.name.startswith("grok-")}
PYTHONS = {"python", "python3", ".venv/bin/python"}
# Flags of tools this repository does not provide, as the docs use them.
EXTERNAL_FLAGS = {
    "kubectl": {"--server-side", "--previous", "--replicas", "--type", "-f", "-n", "-o", "-L", "-p"},
    "helm": {"--set", "--create-namespace", "--strict", "-n"},
}
TOP_LEVEL = {p.name for p in ROOT.iterdir() if p.name not in {".git", ".venv"}}
PACKAGES = {p.parent.name: p.parent for p in ROOT.glob("*/src/*/__init__.py")} | {
    p.parent.name: p.parent for p in ROOT.glob("hack/*/src/*/__init__.py")}


@dataclass(frozen=True)
class Command:
    page: Path
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}: {shlex.join(self.argv)}"


def _fenced(text: str) -> Iterator[tuple[str, str]]:
    """(info string, body) of each fenced block."""
    for m in re.finditer(r"^```([^\n`]*)\n(.*?)^```", text, re.M | re.S):
        yield m.group(1).strip(), m.group(2)


def _prose(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def _inline_spans(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", _prose(text))


def _split(line: str) -> Iterator[list[str]]:
    """A shell line's simple commands: `$(...)` inner commands too, `;`/`&&` separated, comments dropped,
    `[optional]` brackets of usage lines removed."""
    inner = re.findall(r"\$\(([^()]*)\)", line)
    line = re.sub(r"\$\([^()]*\)", "SUBST", line)
    for part in inner:
        yield from _split(part)
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        tokens = line.split()
    current: list[str] = []
    for raw in tokens:
        if raw in {"&&", "||", ";"}:
            yield current
            current = []
            continue
        token = raw.rstrip(";").lstrip("[").rstrip("]")
        if token:
            current.append(token)
        if raw.endswith(";"):
            yield current
            current = []
    yield current


def _command(argv: list[str]) -> list[str]:
    """Leading `VAR=value` assignments dropped, `.venv/bin/` taken off the program."""
    while argv and re.match(r"^[A-Z_]+=", argv[0]):
        argv = argv[1:]
    if argv and argv[0].startswith(".venv/bin/") and argv[0] != ".venv/bin/python":
        argv = [argv[0].removeprefix(".venv/bin/"), *argv[1:]]
    return argv


def _is_command(argv: list[str]) -> bool:
    """An inline span that is a command this repository provides, with arguments (not just its name)."""
    if len(argv) < 2:
        return False
    head = argv[0]
    provided = argv[:2] in (["kubectl", "apply"], ["helm", "install"], ["docker", "build"]) and len(argv) > 2
    return head in CLIS or head == "make" or head in PYTHONS or provided


def commands() -> list[Command]:
    found: list[Command] = []
    for page in PAGES:
        text = page.read_text()
        for info, body in _fenced(text):
            if info not in SHELL_BLOCKS:
                continue
            for raw in re.sub(r"\\\n", " ", body).splitlines():
                if info == "console" and not raw.startswith("$ "):
                    continue  # output
                line = raw[2:] if info == "console" else raw
                found += [Command(page, tuple(argv)) for argv in map(_command, _split(line)) if argv]
        for span in _inline_spans(text):
            found += [Command(page, tuple(argv)) for argv in map(_command, _split(span)) if _is_command(argv)]
    return found


COMMANDS = commands()


# --- argparse parsers, taken from each program's main() without running it ---

class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__()
        self.parser = parser


def _parser_of(main: Callable[[], object], prog: str) -> argparse.ArgumentParser:
    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Captured(self)

    with mock.patch.object(argparse.ArgumentParser, "parse_known_args", capture), \
            mock.patch.object(sys, "argv", [prog]):
        try:
            main()
        except _Captured as c:
            return c.parser
    raise AssertionError(f"{prog}'s main() parsed no arguments")


_PARSERS: dict[str, argparse.ArgumentParser] = {}


def cli_parser(name: str) -> argparse.ArgumentParser:
    if name not in _PARSERS:
        _PARSERS[name] = _parser_of(CLIS[name].load(), name)
    return _PARSERS[name]


def script_parser(path: Path) -> argparse.ArgumentParser:
    key = str(path)
    if key not in _PARSERS:
        spec = importlib.util.spec_from_file_location(f"_docs_{path.stem}", path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        with mock.patch.object(sys, "path", [str(path.parent), *sys.path]):
            spec.loader.exec_module(module)
        _PARSERS[key] = _parser_of(module.main, path.name)
    return _PARSERS[key]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return None


def _all_flags(parser: argparse.ArgumentParser) -> set[str]:
    flags = set(parser._option_string_actions)
    for sub in (_subparsers(parser) or {}).values():
        flags |= _all_flags(sub)
    return flags


def _placeholder(value: str) -> bool:
    return bool(re.search(r"[<>$]|\.\.\.", value)) or value.isupper()


def _flag_like(token: str) -> bool:
    return token.startswith("-") and not re.fullmatch(r"-?\d+(\.\d+)?", token)


def check_args(parser: argparse.ArgumentParser, tokens: list[str]) -> list[str]:
    """What in `tokens` (the arguments after the program, as the docs write them) the parser lacks."""
    errors: list[str] = []
    subparsers = _subparsers(parser)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if _flag_like(token):
            flag, eq, value = token.partition("=")
            action = parser._option_string_actions.get(flag)
            if action is None:
                errors.append(f"{parser.prog} has no flag {flag}")
                i += 1
                continue
            values = [value] if eq else []
            if not eq and action.nargs != 0:
                following = []
                for t in tokens[i + 1:]:
                    if _flag_like(t):
                        break
                    following.append(t)
                n = {None: 1, "?": 1, "*": len(following), "+": len(following)}.get(
                    action.nargs, action.nargs if isinstance(action.nargs, int) else 1)
                values = following[:n]
                i += len(values)
            choices = {str(c) for c in action.choices or ()}
            for v in values:
                for alt in v.split("|"):
                    if choices and not _placeholder(alt) and alt not in choices:
                        errors.append(f"{parser.prog} {flag}: {alt!r} is not one of {sorted(action.choices)}")
            i += 1
        elif subparsers is not None:
            for alt in token.split("|"):
                if alt not in subparsers:
                    errors.append(f"{parser.prog} has no subcommand {alt!r}")
                else:
                    errors += check_args(subparsers[alt], tokens[i + 1:])
            return errors
        else:
            i += 1  # a positional argument
    return errors


# --- repository paths ---

def _path_candidates(token: str) -> Iterator[str]:
    token = token.strip("'\",.:;()")
    if re.fullmatch(r"[\w.*-]+(/[\w.*-]*)+", token):
        yield token


def missing_path(token: str) -> str | None:
    """The token as a repository path that does not exist, if it names one; None otherwise."""
    for candidate in _path_candidates(token):
        first, _, rest = candidate.partition("/")
        if first in TOP_LEVEL:
            base, relative = ROOT, candidate
        elif first in PACKAGES:
            base, relative = PACKAGES[first], rest
        else:
            continue
        if not (list(base.glob(relative)) if "*" in relative else (base / relative).exists()):
            return token
    return None


# --- Makefile ---

MAKEFILE = (ROOT / "Makefile").read_text()
MAKE_TARGETS = set(re.findall(r"^([\w.-]+):", MAKEFILE, re.M))


def check_command(command: Command) -> list[str]:
    argv = list(command.argv)
    errors = [f"no such path {t}" for t in argv if missing_path(t)]
    head = argv[0]
    if head == "make":
        for arg in argv[1:]:
            if "=" in arg:
                var = arg.split("=", 1)[0]
                if f"$({var}" not in MAKEFILE and f"{var} ?=" not in MAKEFILE:
                    errors.append(f"the Makefile does not read {var}")
            elif not arg.startswith("-") and arg not in MAKE_TARGETS:
                errors.append(f"no make target {arg!r}")
    elif head in CLIS:
        errors += check_args(cli_parser(head), argv[1:])
    elif head in PYTHONS and argv[1].endswith(".py"):
        script = ROOT / argv[1]
        if script.exists() and (script.parent.name == "bench" or script == ROOT / "hack" / "demo.py"):
            errors += check_args(script_parser(script), argv[2:])
    elif argv[:2] == ["kubectl", "apply"] and "-f" in argv:
        target = argv[argv.index("-f") + 1]
        path = ROOT / target
        if not _placeholder(target) and path.exists():
            files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
            assert files, target
            for f in files:
                docs = [d for d in yaml.safe_load_all(f.read_text()) if d is not None]
                if not docs or not all(isinstance(d, dict) and d.get("kind") for d in docs):
                    errors.append(f"{f.relative_to(ROOT)}: not YAML objects with a kind")
    elif argv[:2] == ["helm", "install"]:
        chart = next((ROOT / a for a in argv[2:] if (ROOT / a / "Chart.yaml").exists()), None)
        if chart is None:
            errors.append("no chart folder named")
        else:
            values = yaml.safe_load((chart / "values.yaml").read_text())
            for i, arg in enumerate(argv):
                if arg == "--set":
                    node: object = values
                    for key in argv[i + 1].split("=", 1)[0].split("."):
                        if not isinstance(node, dict) or key not in node:
                            errors.append(f"{chart.name}'s values.yaml has no {argv[i + 1].split('=')[0]}")
                            break
                        node = node[key]
    elif argv[:2] == ["docker", "build"]:
        dockerfile = argv[argv.index("-f") + 1] if "-f" in argv else ""
        if not (dockerfile and (ROOT / dockerfile).is_file()):
            errors.append("no Dockerfile named with -f")
    return errors


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_command_is_what_the_repository_has(command: Command) -> None:
    assert check_command(command) == [], str(command)


def test_the_commands_were_found() -> None:
    """The extraction itself: a page restructured so that nothing is found would pass every check."""
    heads = [c.argv[0] for c in COMMANDS]
    assert heads.count("make") >= 4
    assert sum(h in CLIS for h in heads) >= 15
    assert sum(h in PYTHONS for h in heads) >= 3
    assert any(c.argv[:2] == ("kubectl", "apply") for c in COMMANDS)
    assert any(c.argv[:2] == ("helm", "install") for c in COMMANDS)
    assert {"grok-server", "grok-client", "grok-devcluster"} <= set(heads)


def test_inline_paths_exist() -> None:
    missing = [f"{page.relative_to(ROOT)}: {token}" for page in PAGES
               for span in _inline_spans(page.read_text()) for token in span.split() if missing_path(token)]
    assert missing == []


def test_every_flag_named_in_prose_exists() -> None:
    known = set().union(*EXTERNAL_FLAGS.values())
    for name in CLIS:
        known |= _all_flags(cli_parser(name))
    for script in [*sorted((ROOT / "bench").glob("*.py")), ROOT / "hack" / "demo.py"]:
        if re.search(r"^def main\(", script.read_text(), re.M):
            known |= _all_flags(script_parser(script))
    unknown = []
    for page in PAGES:
        for span in _inline_spans(page.read_text()):
            for token in span.split():
                flag = token.strip("[](),").split("=")[0]
                if re.fullmatch(r"--[a-z][a-z0-9-]*", flag) and flag not in known:
                    unknown.append(f"{page.relative_to(ROOT)}: {flag} (in `{span}`)")
    assert unknown == []


# --- links ---

def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    kept = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _prose(page.read_text()), re.M):
        base = _anchor(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links() -> list[tuple[Path, str]]:
    return [(page, target) for page in PAGES
            for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", _prose(page.read_text()))
            if not re.match(r"[a-z]+:", target)]


def test_links_resolve() -> None:
    found = links()
    assert len(found) >= 15
    broken = []
    for page, target in found:
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists() or ROOT not in path.parents:
            broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
        elif anchor and (path.suffix != ".md" or anchor not in anchors(path)):
            broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []


def test_the_readme_is_short_and_its_troubleshooting_is_the_pages() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024
    kept = readme.split("\n## Troubleshooting\n", 1)[1]
    entries = re.findall(r"^- .*?(?=^- |\Z)", kept, re.M | re.S)
    assert len(entries) >= 3
    full = (ROOT / "docs/troubleshooting.md").read_text()
    for entry in entries:
        assert entry.strip() in full, entry
