"""The Helm chart: lint, schema, rendered manifests checked by the API server, and a real
install, upgrade and uninstall on the simulated cluster."""

from __future__ import annotations

import pytest
import yaml

from grok_devcluster import DevCluster
from tests.chart.conftest import CHART, CRD_NAME, helm, template, unique_release
from tests.operatorlib import wait_for

# Kinds the chart creates, and how to list them: (kubectl resource, namespaced)
CHART_RESOURCES = {
    "ServiceAccount": ("serviceaccounts", True),
    "ClusterRole": ("clusterroles.rbac.authorization.k8s.io", False),
    "ClusterRoleBinding": ("clusterrolebindings.rbac.authorization.k8s.io", False),
    "Role": ("roles.rbac.authorization.k8s.io", True),
    "RoleBinding": ("rolebindings.rbac.authorization.k8s.io", True),
    "Service": ("services", True),
    "Deployment": ("deployments.apps", True),
}


def kinds(docs: list[dict]) -> list[tuple[str, str | None, str]]:
    return sorted((d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs)


def rules_of(doc: dict) -> dict[str, set[str]]:
    """resource -> verbs, over every API group of a (Cluster)Role."""
    out: dict[str, set[str]] = {}
    for rule in doc["rules"]:
        for resource in rule["resources"]:
            out.setdefault(resource, set()).update(rule["verbs"])
    return out


def operator_container(docs: list[dict]) -> dict:
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    return deployment["spec"]["template"]["spec"]["containers"][0]


# -- offline: lint, schema, rendering -------------------------------------------------------------------


def test_helm_lint_strict_passes():
    result = helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_helm_lint_strict_passes_with_every_option_on():
    result = helm(
        "lint",
        "--strict",
        str(CHART),
        "--set",
        "watchNamespaces={team-a,team-b},prometheusURL=http://prometheus.monitoring:9090",
        "--set",
        "metrics.serviceMonitor.enabled=true,serviceAccount.create=false,serviceAccount.name=ops",
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set", "replicaCount=-1"], "at '/replicaCount': minimum: got -1, want 0"),
        (
            ["--set", "logLevel=verbose"],
            "at '/logLevel': value must be one of 'DEBUG', 'INFO', 'WARNING', 'ERROR'",
        ),
        (["--set", "logFormat=xml"], "at '/logFormat': value must be one of 'json', 'text'"),
        (["--set", "watchNamespaces={Team_A}"], "at '/watchNamespaces/0': 'Team_A' does not match pattern"),
        (["--set", "watchNamespaces={a,a}"], "at '/watchNamespaces': items at 0 and 1 are equal"),
        (["--set", "prometheusURL=prometheus:9090"], "at '/prometheusURL': 'prometheus:9090' does not match"),
        (["--set", "image.pullPolicy=Sometimes"], "at '/image/pullPolicy': value must be one of"),
        (["--set", "image.repository="], "at '/image/repository': minLength: got 0, want 1"),
        (["--set", "metrics.port=80"], "at '/metrics/port': minimum: got 80, want 1,024"),
        (
            ["--set", "metrics.serviceMonitor.interval=30"],
            "at '/metrics/serviceMonitor/interval': got number",
        ),
        (["--set", "replicas=2"], "additional properties 'replicas' not allowed"),
        (["--set", "serviceAccount.create=yes"], "at '/serviceAccount/create': got string, want boolean"),
        (["--set", "healthPort=8000"], "metrics.port and healthPort must differ"),
        (["--set", "metrics.service.enabeld=false"], "additional properties 'enabeld' not allowed"),
        (
            ["--set", "metrics.service.enabled=false", "--set", "metrics.serviceMonitor.enabled=true"],
            "metrics.serviceMonitor.enabled needs metrics.service.enabled",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and "=" not in v else None,
)
def test_bad_values_are_rejected_with_a_clear_message(values, message):
    result, docs = template("grok", "grok-system", *values)
    assert result.returncode != 0 and not docs
    assert message in result.stderr, result.stderr


def test_cluster_wide_mode_grants_the_operator_a_cluster_role():
    result, docs = template("grok", "grok-system")
    assert result.returncode == 0, result.stderr
    cluster_roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    assert set(cluster_roles) == {"grok-grok-operator", "grok-grok-operator-discovery"}
    rules = rules_of(cluster_roles["grok-grok-operator"])
    assert rules["grokdeployments"] == {"get", "list", "watch", "patch"}
    assert rules["grokdeployments/status"] == {"get", "patch"}
    # Children carry blockOwnerDeletion: where OwnerReferencesPermissionEnforcement is on (OpenShift), setting
    # it needs update on the owner's finalizers.
    assert rules["grokdeployments/finalizers"] == {"update"}
    assert rules["deployments"] >= {"create", "patch"}
    assert "delete" not in set().union(*rules.values()), "the operator deletes nothing: owners do"
    assert rules["secrets"] == {"create"}, "the front door's credential: created, never read"
    assert rules_of(cluster_roles["grok-grok-operator-discovery"]) == {
        "customresourcedefinitions": {"get", "list", "watch"},
        "nodes": {"get", "patch"},  # labels the nodes that hold a model's copy
    }
    # Only the leader-election Role is namespaced, in the release namespace.
    roles = [(d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs if d["kind"] == "Role"]
    assert roles == [("grok-system", "grok-grok-operator-leader-election")]
    args = operator_container(docs)["args"]
    assert not [a for a in args if a.startswith("--namespace")]
    # One leader-election Lease per release: two releases in one namespace must not wait on each other.
    assert "--lease-name=grok-grok-operator" in args
    result, docs = template("grok", "grok-system", "--set", "serverServiceMonitorLabels.release=kps")
    assert result.returncode == 0, result.stderr
    assert "--server-monitor-label=release=kps" in operator_container(docs)["args"]


def test_namespaced_mode_renders_roles_only_in_the_listed_namespaces():
    result, docs = template("grok", "grok-system", "--set", "watchNamespaces={team-a,team-b}")
    assert result.returncode == 0, result.stderr
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in docs if d["kind"] == "Role"}
    assert set(roles) == {
        ("team-a", "grok-grok-operator"),
        ("team-b", "grok-grok-operator"),
        ("grok-system", "grok-grok-operator-leader-election"),
    }
    for ns in ("team-a", "team-b"):
        assert "grokdeployments" in rules_of(roles[(ns, "grok-grok-operator")])
    bindings = {
        (d["metadata"]["namespace"], d["metadata"]["name"]): d for d in docs if d["kind"] == "RoleBinding"
    }
    assert set(bindings) == set(roles)
    for binding in bindings.values():
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "grok-grok-operator", "namespace": "grok-system"}
        ]
        assert binding["roleRef"]["name"] == binding["metadata"]["name"]
    # Cluster-wide: only reading CRDs and labelling nodes, nothing about GrokDeployments or their children.
    cluster_roles = [d for d in docs if d["kind"] == "ClusterRole"]
    assert [d["metadata"]["name"] for d in cluster_roles] == ["grok-grok-operator-discovery"]
    assert set(rules_of(cluster_roles[0])) == {"customresourcedefinitions", "nodes"}
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "ClusterRoleBinding"] == [
        "grok-grok-operator-discovery"
    ]
    args = operator_container(docs)["args"]
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=team-a", "--namespace=team-b"]


def test_operator_pod_is_hardened():
    result, docs = template("grok", "grok-system")
    assert result.returncode == 0, result.stderr
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    container = pod["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["image"] == "grok-serve/operator:0.1.0"
    assert {"livenessProbe", "readinessProbe", "resources"} <= set(container)
    assert "--lease-namespace=grok-system" in container["args"]


def test_service_monitor_is_optional():
    _, default = template("grok", "grok-system")
    assert "ServiceMonitor" not in {d["kind"] for d in default}
    result, docs = template(
        "grok",
        "grok-system",
        "--set",
        "metrics.serviceMonitor.enabled=true,metrics.serviceMonitor.labels.release=kps",
    )
    assert result.returncode == 0, result.stderr
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    (service,) = [d for d in docs if d["kind"] == "Service"]
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


# -- against the API server ------------------------------------------------------------------------------


def dry_run(cluster: DevCluster, docs: list[dict]):
    return cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(docs), check=False, timeout=120
    )


@pytest.mark.cluster
@pytest.mark.parametrize(
    "values",
    [
        [],
        ["--set", "prometheusURL=http://prometheus-operated.monitoring:9090,logLevel=DEBUG,logFormat=text"],
        ["--set", "serviceAccount.create=false,serviceAccount.name=default,metrics.service.enabled=false"],
        [
            "--set",
            "replicaCount=1,podLabels.team=ml,podAnnotations.note=x,nodeSelector.pool=system,"
            "priorityClassName=system-cluster-critical,imagePullSecrets[0].name=regcred",
            "--set-json",
            'tolerations=[{"key":"dedicated","operator":"Exists","effect":"NoSchedule"}]',
            "--set-json",
            'affinity={"nodeAffinity":{"preferredDuringSchedulingIgnoredDuringExecution":[{"weight":1,'
            '"preference":{"matchExpressions":[{"key":"pool","operator":"In","values":["system"]}]}}]}}',
        ],
        ["--set", "dashboards.enabled=true"],  # the dashboard's ConfigMap (the PrometheusRule needs its CRD)
    ],
    ids=["defaults", "prometheus-and-logging", "existing-serviceaccount", "pod-placement", "dashboard"],
)
def test_rendered_manifests_pass_server_side_dry_run(devcluster, k8s_namespace, values):
    result, docs = template(unique_release(), k8s_namespace, *values)
    assert result.returncode == 0, result.stderr
    applied = dry_run(devcluster, docs)
    assert applied.returncode == 0, applied.stderr
    lines = [line for line in applied.stdout.splitlines() if line.strip()]
    assert len(lines) == len(docs)
    assert all(line.endswith("(server dry run)") for line in lines)


@pytest.mark.cluster
def test_namespaced_mode_passes_server_side_dry_run(devcluster, k8s_namespace):
    result, docs = template(
        unique_release(), k8s_namespace, "--set", f"watchNamespaces={{{k8s_namespace},default}}"
    )
    assert result.returncode == 0, result.stderr
    applied = dry_run(devcluster, docs)
    assert applied.returncode == 0, applied.stderr


@pytest.mark.cluster
def test_server_side_dry_run_catches_what_the_api_server_refuses(devcluster, k8s_namespace):
    """The dry-run is a real check: a manifest the API server refuses fails it."""
    _, docs = template(unique_release(), k8s_namespace)
    for doc in docs:
        if doc["kind"] == "Deployment":
            doc["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = 70000
    applied = dry_run(devcluster, docs)
    assert applied.returncode != 0
    assert "containerPort" in applied.stderr


def chart_objects(cluster: DevCluster, namespace: str, release: str) -> list[str]:
    """Every object labelled as this release's, namespaced (in `namespace`) and cluster-scoped."""
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/managed-by=Helm"
    found = []
    for resource, namespaced in CHART_RESOURCES.values():
        scope = ["-n", namespace] if namespaced else []
        out = cluster.kubectl("get", resource, *scope, "-l", selector, "-o", "name").stdout
        found += out.split()
    return sorted(found)


@pytest.mark.cluster
def test_install_upgrade_uninstall(devcluster, k8s_namespace, grok_crd, installable_chart):
    ns, release = k8s_namespace, unique_release("grok-operator")
    installed = helm(
        "install",
        release,
        str(installable_chart),
        "-n",
        ns,
        "--wait",
        "--timeout",
        "150s",
        cluster=devcluster,
    )
    assert installed.returncode == 0, installed.stderr
    assert "STATUS: deployed" in installed.stdout
    assert f"installed in namespace {ns}" in installed.stdout  # NOTES.txt

    objects = chart_objects(devcluster, ns, release)
    assert sorted(o.split("/")[0] for o in objects) == sorted(
        [
            "clusterrole.rbac.authorization.k8s.io",
            "clusterrole.rbac.authorization.k8s.io",
            "clusterrolebinding.rbac.authorization.k8s.io",
            "clusterrolebinding.rbac.authorization.k8s.io",
            "deployment.apps",
            "role.rbac.authorization.k8s.io",
            "rolebinding.rbac.authorization.k8s.io",
            "service",
            "serviceaccount",
        ]
    )
    deployment = devcluster.get_json("deployment", release, "-n", ns)
    # The pods run on the simulated CPU node (KWOK reports them Running and Ready).
    assert deployment["status"].get("readyReplicas") == 2
    pods = devcluster.get_json("pods", "-n", ns, "-l", f"app.kubernetes.io/instance={release}")["items"]
    assert len(pods) == 2
    assert {p["spec"]["nodeName"] for p in pods} == {"cpu-0"}
    assert all(p["spec"]["serviceAccountName"] == release for p in pods)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--log-level=INFO" in container["args"]
    generation = deployment["metadata"]["generation"]

    upgraded = helm(
        "upgrade",
        release,
        str(installable_chart),
        "-n",
        ns,
        "--reuse-values",
        "--set",
        "logLevel=DEBUG",
        "--wait",
        "--timeout",
        "150s",
        cluster=devcluster,
    )
    assert upgraded.returncode == 0, upgraded.stderr
    assert "REVISION: 2" in upgraded.stdout
    deployment = devcluster.get_json("deployment", release, "-n", ns)
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--log-level=DEBUG" in args and "--log-level=INFO" not in args
    assert deployment["metadata"]["generation"] > generation
    history = helm("history", release, "-n", ns, "-o", "json", cluster=devcluster)
    assert [r["status"] for r in yaml.safe_load(history.stdout)] == ["superseded", "deployed"]

    uninstalled = helm("uninstall", release, "-n", ns, "--wait", "--timeout", "150s", cluster=devcluster)
    assert uninstalled.returncode == 0, uninstalled.stderr
    assert chart_objects(devcluster, ns, release) == []
    wait_for(
        lambda: (
            not devcluster.get_json("pods", "-n", ns, "-l", f"app.kubernetes.io/instance={release}")["items"]
        ),
        timeout=120,
        message="the operator's pods to go",
    )
    assert helm("status", release, "-n", ns, cluster=devcluster).returncode != 0
    # CRDs are never deleted by helm (that would delete every GrokDeployment): it stays.
    assert devcluster.kubectl("get", "crd", CRD_NAME, check=False).returncode == 0


@pytest.mark.cluster
def test_namespaced_install_grants_access_only_in_the_listed_namespaces(
    devcluster, k8s_namespace, grok_crd, installable_chart
):
    ns, release = k8s_namespace, unique_release()
    installed = helm(
        "install",
        release,
        str(installable_chart),
        "-n",
        ns,
        "--set",
        f"watchNamespaces={{{ns}}}",
        cluster=devcluster,
    )
    assert installed.returncode == 0, installed.stderr
    try:
        account = f"system:serviceaccount:{ns}:{release}-grok-operator"

        def can(*args: str) -> bool:
            out = devcluster.kubectl("auth", "can-i", *args, f"--as={account}", check=False).stdout.strip()
            return out == "yes"

        assert can("watch", "grokdeployments.serving.grok.dev", "-n", ns)
        assert can("patch", "grokdeployments.serving.grok.dev", "--subresource=status", "-n", ns)
        assert can("create", "deployments.apps", "-n", ns)
        assert can("create", "jobs.batch", "-n", ns)
        assert can("update", "leases.coordination.k8s.io", "-n", ns)
        assert can("list", "customresourcedefinitions.apiextensions.k8s.io")
        assert not can("watch", "grokdeployments.serving.grok.dev", "-n", "default")
        assert not can("create", "deployments.apps", "-n", "default")
        assert not can("list", "grokdeployments.serving.grok.dev", "--all-namespaces")
        assert not can("get", "secrets", "-n", ns)
    finally:
        assert helm("uninstall", release, "-n", ns, cluster=devcluster).returncode == 0


def test_chart_requires_a_supported_kubernetes_version():
    assert template("grok", "grok-system")[0].returncode == 0  # at --kube-version 1.36.3
    result = helm("template", "grok", str(CHART), "--kube-version", "1.29.0")
    assert result.returncode != 0
    assert (
        "chart requires kubeVersion: >=1.30.0-0 which is incompatible with Kubernetes v1.29.0"
        in result.stderr
    )


def test_readme_documents_every_value_and_the_crd_upgrade():
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def keys(tree: dict, prefix: str = "") -> list[str]:
        out = []
        for key, value in tree.items():
            path = prefix + key
            if isinstance(value, dict) and value and key != "resources":
                out += keys(value, path + ".")
            else:
                out.append(path)
        return out

    readme = (CHART / "README.md").read_text()
    table = {line.split("|")[1].strip().strip("`") for line in readme.splitlines() if line.startswith("| `")}
    assert set(keys(values)) <= table, sorted(set(keys(values)) - table)
    assert "kubectl apply --server-side -f charts/grok-operator/crds/" in readme
    assert "watchNamespaces" in readme
