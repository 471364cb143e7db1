"""checkov 3.3.30 (issue 26) on what lands in a cluster: `helm template` of the chart, and the operator's
children of every example (its pure manifest builders, as the operator would apply them), plus the production
example with its front door closed (API keys, limits, TLS), so that the objects only that makes are scanned.

One checkov run over one folder of rendered YAML. Every check that still fails is justified once, in
JUSTIFIED; the test fails on a failing check not listed there, and on a listed one that no longer fails (so
the list stays honest). checkov comes from .venv/checkov (hack/setup-python.sh, run by `make setup`).
"""

from __future__ import annotations

import collections
import copy
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from grok_operator.manifests.children import desired_children
from grok_operator.manifests.front_door import front_door_closed, upstream_token_secret
from grok_operator.plan.admission import admit
from tests.chart.conftest import EXAMPLES, ROOT, template

CHECKOV = ROOT / ".venv" / "checkov" / "bin" / "checkov"
CHECKOV_VERSION = "3.3.30"

ALL = frozenset({"operator", "router", "server"})
# check id -> (whose pods may fail it, why), in one line. Nothing else may fail, no other pods may fail these
# (a server pod that mounted a token again would fail CKV_K8S_38), and each of these must fail.
JUSTIFIED = {
    "CKV_K8S_11": (ALL, "no CPU limits: CFS throttling stalls vLLM's engine loop and the router's and the "
                        "operator's event loops; CPU requests reserve what they need (spec.*.resources may "
                        "add a limit)"),
    "CKV_K8S_13": ({"server"}, "no memory limit on server pods: loading peaks far above serving "
                               "(memory-mapped shards, /dev/shm for tensor parallel, which counts against a "
                               "limit) and an OOM kill costs a minutes-long reload; the request reserves the "
                               "planned memory (spec.server.resources may add a limit)"),
    "CKV_K8S_15": (ALL, "imagePullPolicy IfNotPresent: images are versioned tags, and pulling a multi-GB "
                        "server image at every start slows each cold start (spec.*.imagePullPolicy and the "
                        "chart's image.pullPolicy may say Always)"),
    "CKV_K8S_38": ({"operator", "router"}, "the operator's and the router's pods mount a ServiceAccount "
                                           "token: the operator calls the API, the router watches its "
                                           "servers' pods (a read-only Role); server pods mount none"),
    "CKV_K8S_43": (ALL, "images by tag, not digest, in the chart's default and the examples: a release names "
                        "its version; where a digest is wanted spec.*.image takes name@sha256:... and the "
                        "chart's image.tag TAG@sha256:... (the template writes repository:tag)"),
    "CKV2_K8S_6": (ALL, "pods without a NetworkPolicy: the router is the front door, open to callers by "
                        "design; the operator takes only scrapes; servers get one with spec.router.auth, and "
                        "examples without it are open by choice (a FrontDoorOpen Event says so)"),
}
CLOSED_DOOR_FILE = "children-of-grok-1-fp8-h100-closed-door.yaml"

METRICS_FROM = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                 "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]
CLOSED_DOOR = {"auth": {"secretName": "grok-keys"}, "tls": {"secretName": "grok-front-door-tls"},
               "limits": {"default": {"requestsPerSecond": 5, "concurrentRequests": 8}}}


def children_of(body: dict, namespace: str = "ml") -> list[dict]:
    body = copy.deepcopy(body)
    body["metadata"] = {"namespace": namespace, "uid": "u-1", "generation": 1, **body["metadata"]}
    admission = admit(body)
    assert admission.spec is not None and admission.plan is not None, admission.refusal
    children = desired_children(admission.spec, admission.plan, {}, METRICS_FROM)
    if front_door_closed(admission.spec):
        children.append(upstream_token_secret(admission.spec, "redacted"))
    return children


def render(out: Path) -> None:
    result, docs = template("grok", "grok-system")
    assert result.returncode == 0, result.stderr
    (out / "chart.yaml").write_text(yaml.safe_dump_all(docs))
    for path in sorted(EXAMPLES.glob("*.yaml")):
        grokds = [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "GrokDeployment"]
        children = [c for body in grokds for c in children_of(body)]
        (out / f"children-of-{path.name}").write_text(yaml.safe_dump_all(children))
    (production,) = (d for d in yaml.safe_load_all((EXAMPLES / "grok-1-fp8-h100.yaml").read_text())
                     if d and d.get("kind") == "GrokDeployment")
    production["spec"]["router"] = {**production["spec"].get("router", {}), **CLOSED_DOOR}
    # A namespace of its own: checkov links a NetworkPolicy to the pods it selects across files, and the
    # closed door's would otherwise cover the open production example's server pods (same names, labels).
    (out / CLOSED_DOOR_FILE).write_text(yaml.safe_dump_all(children_of(production, "ml-closed")))


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> dict:
    assert CHECKOV.exists(), f"{CHECKOV} is missing: run `make setup` (hack/setup-python.sh installs it)"
    out = tmp_path_factory.mktemp("checkov")
    rendered = out / "rendered"
    rendered.mkdir()
    render(rendered)
    # --skip-download: nothing fetched from Prisma Cloud (no network in tests; the checks are built in).
    result = subprocess.run(
        [str(CHECKOV), "--directory", str(rendered), "--framework", "kubernetes", "--skip-download",
         "--quiet", "--compact", "--output", "json"],
        capture_output=True, text=True, timeout=600, check=False, cwd=out,
        env={**os.environ, "BC_API_KEY": "", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]  # 1: some check failed
    report = json.loads(result.stdout)
    return report[0] if isinstance(report, list) else report


def test_checkov_is_the_pinned_version(scan: dict) -> None:
    assert scan["summary"]["checkov_version"] == CHECKOV_VERSION
    assert scan["summary"]["parsing_errors"] == 0
    assert scan["summary"]["resource_count"] > 0 and scan["summary"]["passed"] > 0


def whose(finding: dict) -> str:
    """The pods a finding is about: the operator's (the chart), or a GrokDeployment's router or servers."""
    if Path(finding["file_path"]).name == "chart.yaml":
        return "operator"
    name = finding["resource"].split(".")[2]  # Kind.namespace.name[.labels]
    return "router" if name.endswith("-router") else "server"


def test_every_failed_check_is_justified_and_every_justification_still_fails(scan: dict) -> None:
    failed: dict[str, set[str]] = collections.defaultdict(set)
    unjustified: dict[str, list[str]] = collections.defaultdict(list)
    for finding in scan["results"]["failed_checks"]:
        file = Path(finding["file_path"]).name
        where = f"{file}: {finding['resource']} ({finding['check_name']})"
        failed[finding["check_id"]].add(where)
        pods, _ = JUSTIFIED.get(finding["check_id"], (frozenset(), ""))
        # With its front door closed a server pod has a NetworkPolicy: CKV2_K8S_6 is justified for open ones.
        closed_server = file == CLOSED_DOOR_FILE and whose(finding) == "server"
        if whose(finding) not in pods or (finding["check_id"] == "CKV2_K8S_6" and closed_server):
            unjustified[finding["check_id"]].append(where)
    assert not unjustified, "fix these, or justify them in JUSTIFIED:\n" + json.dumps(unjustified, indent=1)
    stale = sorted(set(JUSTIFIED) - set(failed))
    assert not stale, f"no longer failing: drop these from JUSTIFIED: {stale}"
