"""How the router logs in to the API server without --kubeconfig: in a pod, its service account from the
standard in-cluster files; elsewhere the Kubernetes client's own kubeconfig lookup ($KUBECONFIG), which is
how the simulated cluster's pod runner hands a router pod its service account (no product hook for it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from grok_devcluster.podspec import in_cluster_kubeconfig

# Runs in a fresh process: the client reads $KUBECONFIG when it is imported.
LOGIN = """
import json
from grok_router.replicas import PodWatcher, ReplicaSet
api = PodWatcher(ReplicaSet(0.5, 8), "ns", "app=x")._api()
c = api.api_client.configuration
header = c.auth_settings().get("BearerToken", {})  # the Authorization header the client sends
print(json.dumps({"host": c.host, "auth": header.get("value"), "ca": c.ssl_ca_cert}))
"""


def _login(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # No KUBERNETES_SERVICE_HOST: not in a pod, whatever machine runs the test.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "KUBECONFIG"))}
    return subprocess.run([sys.executable, "-c", LOGIN], env={**base, **env}, capture_output=True, text=True,
                          timeout=60, check=False)


def test_outside_a_pod_the_router_logs_in_with_the_kubeconfig_the_pod_runner_gives_it(tmp_path: Path) -> None:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("the-pods-token")
    (account / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    kubeconfig = tmp_path / "router.kubeconfig"
    kubeconfig.write_text(json.dumps(in_cluster_kubeconfig("https://127.0.0.9:6443", str(account), "ns")))
    done = _login({"KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["host"] == "https://127.0.0.9:6443"
    assert seen["auth"] == "Bearer the-pods-token"
    assert Path(seen["ca"]).read_text() == "-----BEGIN CERTIFICATE-----\n"


def test_with_neither_a_service_account_nor_a_kubeconfig_the_error_says_to_pass_one(tmp_path: Path) -> None:
    done = _login({"HOME": str(tmp_path)})
    assert done.returncode != 0
    assert "no service account" in done.stderr and "pass --kubeconfig" in done.stderr
