"""The three images, checked by reading their Dockerfiles (no container engine here to build them; see
the chart README): base images, pins, users and entrypoints agree with the rest of the repository."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib

import yaml

from tests.chart.conftest import CHART, CRDS, ROOT

OPERATOR_DOCKERFILE = ROOT / "operator" / "Dockerfile"
SERVER_DOCKERFILE = ROOT / "server" / "Dockerfile"
ROUTER_DOCKERFILE = ROOT / "router" / "Dockerfile"


def instructions(path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def final_stage(path) -> list[tuple[str, str]]:
    ins = instructions(path)
    last_from = max(i for i, (k, _) in enumerate(ins) if k == "FROM")
    return ins[last_from:]


def arg_default(path, name: str) -> str:
    for keyword, rest in instructions(path):
        if keyword == "ARG" and rest.startswith(f"{name}="):
            return rest.split("=", 1)[1]
    raise AssertionError(f"no ARG {name} in {path}")


def pyproject(part: str) -> dict:
    return tomllib.loads((ROOT / part / "pyproject.toml").read_text())


def test_server_image_is_the_official_vllm_image_at_the_tested_version():
    (pin,) = [
        r for r in pyproject("server")["project"]["optional-dependencies"]["cuda"] if r.startswith("vllm")
    ]
    version = pin.split("==")[1]
    stage = final_stage(SERVER_DOCKERFILE)
    assert stage[0] == ("FROM", f"vllm/vllm-openai:v{version}")
    assert ("ARG", f"VLLM_VERSION={version}") in stage
    text = " ".join(rest for _, rest in stage)
    # vLLM stays the base image's: the cuda extra is not installed, and vLLM's version is checked.
    assert "[cuda]" not in text and "[cpu]" not in text
    assert "== '${VLLM_VERSION}'" in text


def test_server_image_installs_the_s3_extra_at_the_tested_versions():
    # The CRD offers s3:// models; the fetch Job runs grok-fetch from this image, which needs boto3.
    (boto3,) = pyproject("server")["project"]["optional-dependencies"]["s3"]
    tested = (ROOT / "requirements" / "s3" / "extra.txt").read_text()
    assert re.search(rf"^{re.escape(boto3)}$", tested, re.M), "the extra's pin is the version tested"
    runs = " ".join(rest for k, rest in instructions(SERVER_DOCKERFILE) if k == "RUN")
    assert "requirements/s3/extra.txt >> /wheels/pins.txt" in runs
    assert '"${wheel[0]}[s3]"' in runs and "-c /tmp/wheels/pins.txt" in runs
    assert "import boto3, grok_server.fetch" in runs


def test_server_and_router_images_generate_the_stubs_from_protos_into_grok_rpc():
    for dockerfile in (SERVER_DOCKERFILE, ROUTER_DOCKERFILE):
        build = " ".join(rest for k, rest in instructions(dockerfile) if k in ("RUN", "COPY"))
        assert "grpc_tools.protoc -Iprotos" in build
        for out in ("--python_out=rpc/src", "--pyi_out=rpc/src", "--grpc_python_out=rpc/src"):
            assert out in build, dockerfile
        assert "rm -rf rpc/src/grok" in build, "stubs are generated in the build, never copied in"
        assert ("COPY", "protos/ protos/") in instructions(dockerfile)
        assert ("COPY", "rpc/ rpc/") in instructions(dockerfile)
    # Where hack/gen-protos.sh writes them for development: the same folder.
    assert "src=rpc/src" in (ROOT / "hack" / "gen-protos.sh").read_text()
    pins = (ROOT / "requirements" / "dev.txt").read_text()
    assert re.search(r"^grpcio-tools==", pins, re.M), "the grpcio-tools version the build uses"


def test_both_images_run_as_the_non_root_user_the_chart_expects():
    chart_uid = re.search(r"runAsUser: (\d+)", (CHART / "templates" / "deployment.yaml").read_text()).group(1)
    for path in (OPERATOR_DOCKERFILE, SERVER_DOCKERFILE, ROUTER_DOCKERFILE):
        users = [rest for k, rest in final_stage(path) if k == "USER"]
        assert users, f"{path} sets no USER"
        uid = users[-1].split(":")[0]
        assert uid.isdigit() and int(uid) != 0, "numeric, so that runAsNonRoot can verify it"
        assert uid == chart_uid


def test_entrypoints_are_the_distributions_console_scripts():
    expected = {
        OPERATOR_DOCKERFILE: ("operator", "grok-operator"),
        SERVER_DOCKERFILE: ("server", "grok-server"),
        ROUTER_DOCKERFILE: ("router", "grok-router"),
    }
    for path, (part, script) in expected.items():
        (entrypoint,) = [rest for k, rest in final_stage(path) if k == "ENTRYPOINT"]
        assert json.loads(entrypoint) == [script]
        assert script in pyproject(part)["project"]["scripts"]


def test_operator_image_is_small_and_pinned():
    text = OPERATOR_DOCKERFILE.read_text()
    runs = " ".join(
        rest for k, rest in instructions(OPERATOR_DOCKERFILE) if k in ("RUN", "ENV", "FROM", "ARG")
    )
    assert not re.search(r"vllm|torch|cuda", runs, re.I)
    assert arg_default(OPERATOR_DOCKERFILE, "PYTHON_IMAGE").startswith("python:3.11-slim")
    assert "PIP_CONSTRAINT=/src/requirements/constraints.txt" in text
    constraints = (ROOT / "requirements" / "constraints.txt").read_text().lower()
    for requirement in pyproject("operator")["project"]["dependencies"]:
        if not requirement.startswith("grok-"):  # the repository's own: test_images_install_grok_common
            assert requirement.lower().replace("_", "-") in constraints.replace("_", "-")
    # Byte-compiled at build time: the root filesystem is read-only at run time.
    assert "compileall" in runs and "PYTHONDONTWRITEBYTECODE=1" in runs


def test_images_install_grok_common_from_the_repository_at_the_pinned_version():
    # grok-common is on no index: each image copies common/ and installs it beside what depends on it.
    version = pyproject("common")["project"]["version"]
    for part in ("operator", "server", "router"):
        assert f"grok-common=={version}" in pyproject(part)["project"]["dependencies"]
    for dockerfile in (OPERATOR_DOCKERFILE, SERVER_DOCKERFILE, ROUTER_DOCKERFILE):
        ins = instructions(dockerfile)
        assert ("COPY", "common/ common/") in ins, dockerfile
        runs = " ".join(rest for k, rest in ins if k == "RUN")
        assert re.search(r"pip (install|wheel) [^&]*\./common ", runs), dockerfile


def test_server_and_router_images_install_grok_rpc_from_the_repository_at_the_pinned_version():
    # grok-rpc (the stubs, the gRPC server setup) is what the server and the router share: neither depends
    # on the other.
    version = pyproject("rpc")["project"]["version"]
    for part in ("server", "router"):
        assert f"grok-rpc=={version}" in pyproject(part)["project"]["dependencies"]
    assert not any(r.startswith("grok-server") for r in pyproject("router")["project"]["dependencies"])
    for dockerfile in (SERVER_DOCKERFILE, ROUTER_DOCKERFILE):
        runs = " ".join(rest for k, rest in instructions(dockerfile) if k == "RUN")
        assert re.search(r"pip (install|wheel) [^&]*\./rpc ", runs), dockerfile


def test_router_image_has_no_engine_and_is_pinned():
    runs = " ".join(rest for k, rest in instructions(ROUTER_DOCKERFILE) if k in ("RUN", "ENV", "FROM", "ARG"))
    assert "./router" in runs and "PIP_CONSTRAINT=/src/requirements/constraints.txt" in runs
    assert "./server" not in runs and ("COPY", "server/ server/") not in instructions(ROUTER_DOCKERFILE)
    assert not re.search(r"vllm/|\[cuda\]|\[cpu\]|pip install[^&]*torch", runs, re.I)
    for module in ("grok_server", "vllm", "torch"):  # the build proves it
        assert f'! /opt/grok-router/bin/python -c "import {module}"' in runs
    assert arg_default(ROUTER_DOCKERFILE, "PYTHON_IMAGE").startswith("python:3.11-slim")
    constraints = (ROOT / "requirements" / "constraints.txt").read_text().lower()
    for part in ("router", "rpc"):
        for requirement in pyproject(part)["project"]["dependencies"]:
            if not requirement.startswith("grok-"):  # the repository's own
                assert requirement.lower().replace("_", "-") in constraints.replace("_", "-")


def test_router_package_imports_neither_grok_server_nor_vllm_nor_torch():
    code = ("import sys, grok_router.main, grok_router.http; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grok_server', 'vllm', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_image_names_agree_with_the_chart_and_the_crd():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    operator_tag = f"{values['image']['repository']}:{chart['appVersion']}"
    assert f"-t {operator_tag} ." in OPERATOR_DOCKERFILE.read_text()
    (crd,) = [
        d for d in yaml.safe_load_all((CRDS / "grokdeployments.serving.grok.dev.yaml").read_text()) if d
    ]
    server = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "server"
    ]
    router = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "router"
    ]
    assert f"-t {router['properties']['image']['default']} ." in ROUTER_DOCKERFILE.read_text()
    default_image = server["properties"]["image"]["default"]
    assert f"-t {default_image} ." in SERVER_DOCKERFILE.read_text()
    assert default_image.endswith(":" + pyproject("server")["project"]["version"])
    exposed = " ".join(rest for k, rest in final_stage(SERVER_DOCKERFILE) if k == "EXPOSE").split()
    ports = server["properties"]
    assert exposed == [str(ports["grpcPort"]["default"]), str(ports["metricsPort"]["default"])]


def test_dockerignore_keeps_what_the_builds_copy():
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {".venv", "rpc/src/grok", "**/__pycache__"} <= set(ignored)
    copied = set()
    for path in (OPERATOR_DOCKERFILE, SERVER_DOCKERFILE, ROUTER_DOCKERFILE):
        for keyword, rest in instructions(path):
            if keyword == "COPY" and "--from" not in rest:
                copied.add(rest.split()[0].rstrip("/").split("/")[0])
    assert copied == {"common", "operator", "protos", "requirements", "router", "rpc", "server"}
    assert not copied & {entry.rstrip("/") for entry in ignored}
