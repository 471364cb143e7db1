"""The operator's API client against the kubernetes client's DynamicClient, on a simulated cluster.

grok_operator.control.kube keeps a kind -> REST path table (PLURALS) and calls ApiClient.param_serialize
itself; the kubernetes client's DynamicClient would find the paths by API discovery instead. This
measures, in fresh processes (as an operator pod starts: an empty /tmp, so no discovery cache), what each
costs to start: resident memory after importing the operator and resolving its kinds, the HTTP requests
sent before the first server-side apply, and the time they take. Prints one JSON line per variant.

    .venv/bin/python bench/kube_client.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from grok_devcluster import DevCluster

ROOT = Path(__file__).resolve().parents[1]

# Every kind the operator reads or applies, with its apiVersion (grok_operator.control.kube.PLURALS' keys).
KINDS = (
    ("apps/v1", "Deployment"), ("v1", "Service"), ("policy/v1", "PodDisruptionBudget"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"), ("v1", "PersistentVolumeClaim"), ("batch/v1", "Job"),
    ("v1", "Pod"), ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"), ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "Role"), ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("serving.grok.dev/v1alpha1", "GrokDeployment"),
)
SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "probe", "namespace": "default"},
           "spec": {"ports": [{"port": 80}], "selector": {"app": "probe"}}}

# Run in a fresh interpreter per variant: argv[1] is "table" (grok_operator.control.kube as it is) or
# "dynamic".
CHILD = r"""
import json, sys, time
from pathlib import Path

def rss_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

import grok_operator.handlers  # everything the operator imports
from kubernetes.client import rest
requests = []
original = rest.RESTClientObject.request
def counted(self, method, url, *args, **kwargs):
    requests.append(f"{method} {url.split('://', 1)[1].split('/', 1)[1]}")
    return original(self, method, url, *args, **kwargs)
rest.RESTClientObject.request = counted

from grok_operator.control.kube import Kube, load_config
api = load_config()
variant, kinds, service = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
started = time.monotonic()
if variant == "table":
    Kube(api).apply(service, "grok-operator")
else:
    from kubernetes.dynamic import DynamicClient
    from kubernetes.dynamic.exceptions import ResourceNotFoundError
    dynamic = DynamicClient(api)
    missing, steps = [], {"client": len(requests)}
    for api_version, kind in kinds:
        before = len(requests)
        try:
            dynamic.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            missing.append(kind)
        steps[kind] = len(requests) - before
    services = dynamic.resources.get(api_version="v1", kind="Service")
    dynamic.server_side_apply(services, body=service, namespace="default", field_manager="grok-operator",
                              force_conflicts=True)
seconds = time.monotonic() - started
print(json.dumps({"variant": variant, "rss_mib": round(rss_mib(), 1), "requests": len(requests),
                  "distinct": len(set(requests)), "seconds": round(seconds, 3),
                  **({"missing": missing, "requests_by_step": steps} if variant == "dynamic" else {})}))
"""


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    with DevCluster(f"bench-kube-{os.getpid()}", run_pods=False, lws=False) as cluster:
        cluster.up([], cpu_nodes=1)
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "charts/grok-operator/crds"))
        cluster.wait_crd_established("grokdeployments.serving.grok.dev")
        for variant in ("table", "dynamic", "table", "dynamic"):
            with tempfile.TemporaryDirectory() as tmp:  # a pod's fresh /tmp: no discovery cache yet
                env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "TMPDIR": tmp}
                argv = [sys.executable, "-c", CHILD, variant, json.dumps(KINDS), json.dumps(SERVICE)]
                out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
            print(out.strip(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
