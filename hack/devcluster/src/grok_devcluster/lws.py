"""The real LeaderWorkerSet controller beside the simulated cluster (sigs.k8s.io/lws, from build_tools.sh).

kwokctl runs LWS only in its container runtimes, so this does for the binary runtime what kwokctl does there:
the manager runs as a local process with the admin kubeconfig, leader election and its internal certificate
management off, serving its webhooks on loopback with the cluster's own certificates (kwokctl's admin
certificate, signed by the cluster CA, is valid for 127.0.0.1); the module's CRDs and webhook configurations
(`lws-config/` in the tools folder, copied from the module by the build) are installed with each webhook's
`clientConfig` pointed at https://127.0.0.1:<port><path> and the cluster CA as `caBundle`. LeaderWorkerSets
then get their StatefulSets, pods, labels and environment exactly as on a cluster.

The pods' webhooks are limited to LWS pods (the `objectSelector` of the release's kustomize patches, applied
here too), so the rest of the cluster does not depend on this process.
"""

from __future__ import annotations

import base64
import copy
import json
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from grok_devcluster.documents import documents
from grok_devcluster.local import free_port

API_VERSION = "leaderworkerset.x-k8s.io/v1"
# The module's CRDs (config/crd/bases): the manager runs the controllers of both, so it needs both.
CRDS = ("leaderworkersets.leaderworkerset.x-k8s.io", "disaggregatedsets.disaggregatedset.x-k8s.io")
NAME_PREFIX = "lws-"  # as the release's kustomization names its objects
CONFIG_DIR = "lws-config"  # in the tools folder
MANAGER_BINARY = "lws-manager"


class LwsError(RuntimeError):
    pass


# ---- manifests (pure) -------------------------------------------------------------------------------------


def manager_config(webhook_port: int, cert_dir: Path) -> dict[str, Any]:
    """The manager's Configuration (config.lws.x-k8s.io/v1alpha1) outside a cluster: no leader election, no
    internal certificate management (certificates in `cert_dir`), webhooks on loopback, no metrics or probe
    listeners (the cluster checks readiness through the webhooks themselves)."""
    return {
        "apiVersion": "config.lws.x-k8s.io/v1alpha1",
        "kind": "Configuration",
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "metrics": {"bindAddress": "0"},
        "health": {"healthProbeBindAddress": "0"},
    }


def _pointer(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for raw in path.lstrip("/").split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        parts.append(int(token) if token.isdigit() else token)
    return parts


def json_patch(doc: Any, ops: Iterable[Mapping[str, Any]]) -> Any:
    """RFC 6902 `add`, `replace` and `remove` (what the module's kustomize patches use) on a copy of `doc`."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = _pointer(op["path"])
        target = doc
        for part in parents:
            target = target[part]
        kind = op["op"]
        if kind == "remove":
            del target[last]
        elif kind == "replace":
            target[last] = copy.deepcopy(op["value"])
        elif kind == "add":
            value = copy.deepcopy(op["value"])
            if isinstance(target, list):
                target.insert(len(target) if last == "-" else int(last), value)
            else:
                target[last] = value
        else:
            raise LwsError(f"unsupported patch operation {kind!r} in the LWS manifests")
    return doc


def webhook_configurations(config_dir: Path, base_url: str, ca_bundle: bytes) -> list[dict[str, Any]]:
    """The module's webhook configurations, with the patches of its kustomization applied, named as released
    (`lws-` prefix), and every webhook's `clientConfig` a URL on `base_url` trusting `ca_bundle` (PEM)."""
    webhook = config_dir / "webhook"
    docs = [d for d in yaml.safe_load_all((webhook / "manifests.yaml").read_text()) if d]
    kustomization = yaml.safe_load((webhook / "kustomization.yaml").read_text())
    for patch in kustomization.get("patches") or []:
        target = patch.get("target") or {}
        ops = yaml.safe_load((webhook / patch["path"]).read_text())
        matched = False
        for i, doc in enumerate(docs):
            if doc["kind"] == target.get("kind") and doc["metadata"]["name"] == target.get("name"):
                docs[i] = json_patch(doc, ops)
                matched = True
        if not matched:
            raise LwsError(f"LWS webhook patch {patch['path']} matches no manifest")
    bundle = base64.b64encode(ca_bundle).decode()
    out = []
    for released in docs:
        doc = copy.deepcopy(released)
        doc["metadata"]["name"] = NAME_PREFIX + doc["metadata"]["name"]
        for hook in doc.get("webhooks") or []:
            path = (hook["clientConfig"].get("service") or {}).get("path", "/")
            hook["clientConfig"] = {"url": base_url.rstrip("/") + path, "caBundle": bundle}
        out.append(doc)
    return out


def crd_files(config_dir: Path) -> list[Path]:
    return sorted((config_dir / "crd").glob("*.yaml"))


# ---- the process ------------------------------------------------------------------------------------------


def _probe_lws(name: str) -> dict[str, Any]:
    """A LeaderWorkerSet for a server-side dry run: goes through both of its webhooks, stores nothing."""
    return {
        "apiVersion": API_VERSION,
        "kind": "LeaderWorkerSet",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"leaderWorkerTemplate": {"size": 2, "workerTemplate": {"spec": {"containers": [
            {"name": "c", "image": "sim.local/probe:1"}]}}}},
    }


class LwsManager:
    """The manager of one cluster: `install_crds`, `start` (configuration, certificates, the process adopted
    by the cluster, the webhook configurations pointing at it), `wait_ready`."""

    def __init__(self, bin_dir: Path, state: Path, kubeconfig: Path, pki: Path,
                 kubectl: Callable[..., subprocess.CompletedProcess[str]]) -> None:
        self.bin_dir = bin_dir
        self.state = state
        self.kubeconfig = kubeconfig
        self.pki = pki
        self.kubectl = kubectl
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def config_dir(self) -> Path:
        return self.bin_dir / CONFIG_DIR

    @property
    def log_path(self) -> Path:
        return self.state / "manager.log"

    def install_crds(self) -> subprocess.Popen[str]:
        """Starts creating the CRDs in the new cluster; the caller waits for it. (MBs of schema: a plain
        create, cheaper for the API server than a server-side apply; client-side apply's annotation would
        not fit.)"""
        args = [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), "create"]
        for path in crd_files(self.config_dir):
            args += ["-f", str(path)]
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def start(self, adopt: Callable[[int], None]) -> None:
        """Writes its configuration and certificates, starts the manager (adopted: the cluster's `down` stops
        it) and installs the webhook configurations pointing at it."""
        self.state.mkdir(parents=True, exist_ok=True)
        certs = self.state / "certs"
        certs.mkdir(exist_ok=True)
        shutil.copyfile(self.pki / "admin.crt", certs / "tls.crt")
        shutil.copyfile(self.pki / "admin.key", certs / "tls.key")
        (certs / "tls.key").chmod(0o600)
        self.port = free_port()
        config = self.state / "config.yaml"
        config.write_text(yaml.safe_dump(manager_config(self.port, certs)))
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(self.bin_dir / MANAGER_BINARY), f"--kubeconfig={self.kubeconfig}", f"--config={config}",
             "--zap-log-level=info", "--zap-devel=false"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        adopt(self.proc.pid)
        (self.state / "pid").write_text(str(self.proc.pid))
        hooks = webhook_configurations(self.config_dir, f"https://127.0.0.1:{self.port}",
                                       (self.pki / "ca.crt").read_bytes())
        self.kubectl("apply", "-f", "-", input=documents(hooks))

    def _serving(self, timeout: float = 1.0) -> bool:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as raw, \
                    context.wrap_socket(raw, server_hostname="127.0.0.1"):
                return True
        except (OSError, ssl.SSLError):
            return False

    def _check_exited(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise LwsError(
                f"the LeaderWorkerSet manager exited ({self.proc.returncode}); see {self.log_path}")

    def wait_ready(self, deadline: float) -> None:
        """Until its webhook serves (TLS with the cluster CA) and the API server gets answers from it: a
        server-side dry run of a LeaderWorkerSet passes both of its webhooks."""
        while not self._serving():
            self._check_exited()
            if time.monotonic() > deadline:
                raise LwsError(f"the LeaderWorkerSet manager's webhook did not serve; see {self.log_path}")
            time.sleep(0.05)
        probe = json.dumps(_probe_lws("grok-devcluster-probe"))
        while True:
            result = self.kubectl("create", "--dry-run=server", "-o", "name", "-f", "-", input=probe,
                                  check=False)
            if result.returncode == 0:
                return
            self._check_exited()
            if time.monotonic() > deadline:
                raise LwsError(f"LeaderWorkerSet webhooks not answering: {result.stderr.strip()}")
            time.sleep(0.2)
