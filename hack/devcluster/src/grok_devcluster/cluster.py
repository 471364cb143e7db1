"""Lifecycle of one simulated GPU cluster: a thin layer over `kwokctl --runtime binary`, plus the pod runner.

kwokctl generates certificates and a kubeconfig, picks free ports and runs etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and the KWOK controller as local processes; `down` stops all of
them. The pod runner (`podrunner`, on by default) runs the pods of this project's images for real, and the
LeaderWorkerSet manager (`lws`, on by default) serves LeaderWorkerSets (multi-node replicas). Each cluster
keeps its state in a folder of its own under the system's temporary directory, so several can run side by
side.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from grok_common.pods import is_ready
from grok_devcluster import nodes, stages
from grok_devcluster.documents import documents
from grok_devcluster.local import wait
from grok_devcluster.lws import CRDS as lws_crds
from grok_devcluster.lws import LwsError, LwsManager
from grok_devcluster.tools import tools_dir
from grok_operator.api.gpus import gpu_product

KUBE_VERSION = "v1.36.3"
# Pods KWOK simulates get loopback addresses from here; the pod runner's from podrunner.RUNNER_POD_CIDR.
KWOK_POD_CIDR = "127.64.0.1/16"


@dataclass(frozen=True)
class NodePool:
    """`count` simulated nodes, each with `gpus_per_node` GPUs of one product."""

    count: int = 4
    gpus_per_node: int = 8
    gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    name_prefix: str = "gpu"

    def manifests(self) -> list[dict[str, Any]]:
        product = gpu_product(self.gpu_product)
        return [
            nodes.gpu_node(f"{self.name_prefix}-{i}", product, self.gpus_per_node) for i in range(self.count)
        ]


class ClusterError(RuntimeError):
    pass


_CONNECT_ATTEMPTS = 4
# kubectl's errors for a request that never reached the API server (safe to send again, whatever the verb).
_NEVER_REACHED = ("TLS handshake timeout", "connect: connection refused")


def _running(pid: int) -> bool:
    """Whether `pid` still runs (a zombie child of ours is reaped and counts as gone)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def state_root() -> Path:
    return Path(
        os.environ.get(
            "GROK_DEVCLUSTER_STATE", Path(tempfile.gettempdir()) / f"grok-devcluster-{os.getuid()}"
        )
    )


class DevCluster:
    """One local control plane. Use as a context manager, or call `up()` and `down()`."""

    def __init__(self, name: str | None = None, bin_dir: Path | None = None, run_pods: bool = True,
                 lws: bool = True) -> None:
        self.name = name or f"grok-{secrets.token_hex(3)}"
        self.workdir = state_root() / self.name
        self._bin_dir = bin_dir
        self.run_pods = run_pods
        self.lws = lws  # the LeaderWorkerSet manager and its CRDs and webhooks

    # -- paths ----------------------------------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = tools_dir()
        return self._bin_dir

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "clusters" / self.name / "kubeconfig.yaml"

    def exists(self) -> bool:
        return self.kubeconfig.exists()

    @property
    def runner_dir(self) -> Path:
        """The pod runner's state: pod logs, volumes of emptyDirs, process groups."""
        return self.workdir / "podrunner"

    def node_dir(self, node: str) -> Path:
        """A simulated node's own folder: its hostPath volumes live beneath it (podspec.host_path_folder)."""
        return self.runner_dir / "nodes" / node

    @property
    def lws_dir(self) -> Path:
        """The LeaderWorkerSet manager's state: its configuration, serving certificates and log."""
        return self.workdir / "lws"

    @property
    def volumes_dir(self) -> Path:
        """The folders behind the static PersistentVolumes."""
        return self.workdir / "volumes"

    def env(self) -> dict[str, str]:
        """Environment for commands that talk to this cluster (kubectl, helm, the operator)."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ['PATH']}",
        }

    # -- lifecycle ------------------------------------------------------------------------------------

    def up(
        self,
        pools: Sequence[NodePool] = (NodePool(),),
        cpu_nodes: int = 1,
        volumes: int = 64,
        timeout: float = 180,
    ) -> DevCluster:
        """Starts the control plane, registers the nodes and waits until they are Ready.

        Anything started is stopped again if this fails or is interrupted (Ctrl-C).
        """
        if self.exists():
            raise ClusterError(f"cluster {self.name!r} is already up (state in {self.workdir})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            config = self.workdir / "kwokctl.yaml"
            config.write_text(yaml.safe_dump_all([self._kwokctl_config(), *stages.stages(self.run_pods)]))
            self._kwokctl("create", "cluster", "--config", str(config), "--wait", f"{int(timeout)}s")
            # The LWS CRDs (MBs of schema) go in while the nodes register; its manager starts while they turn
            # Ready and the pod runner starts.
            lws = self._lws_manager() if self.lws else None
            crds = lws.install_crds() if lws is not None else None
            manifests = [nodes.cpu_node(f"cpu-{i}") for i in range(cpu_nodes)]
            for pool in pools:
                manifests += pool.manifests()
            manifests += [nodes.static_volume(f"pv-{i:03d}", self.volumes_dir) for i in range(volumes)]
            self.apply(manifests)
            if lws is not None and crds is not None:
                self._start_lws(lws, crds, deadline=time.monotonic() + timeout)
            self._wait_ready(deadline=time.monotonic() + timeout)
            if self.run_pods:
                self._start_runner(deadline=time.monotonic() + timeout)
            if lws is not None:
                try:
                    lws.wait_ready(deadline=time.monotonic() + timeout)
                except LwsError as e:
                    raise ClusterError(str(e)) from None
        except BaseException:
            self.down()
            raise
        return self

    def adopt(self, pid: int) -> None:
        """Ties a process started beside the cluster, in a session of its own (the pod runner, an operator, a
        Prometheus), to it: `down` stops it too, so that one command ends everything."""
        folder = self.workdir / "adopted"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / str(pid)).touch()

    def _stop_adopted(self, timeout: float = 60) -> None:
        """SIGTERM to every adopted process group, up to `timeout` for them all, then SIGKILL; and the pod
        runner's process groups it could not stop itself (after a crash of it)."""
        folder = self.workdir / "adopted"
        pids = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for pid in pids:
            while time.monotonic() < deadline and _running(pid):
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        from grok_devcluster.podrunner import kill_leftovers  # not at import: `python -m` runs that module

        kill_leftovers(self.runner_dir)

    def down(self) -> None:
        """Stops every process of this cluster (adopted ones included) and removes its state; a no-op when it
        is not up."""
        self._stop_adopted()
        if (self.workdir / "clusters" / self.name).exists():
            self._kwokctl("delete", "cluster", check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> DevCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- talking to it --------------------------------------------------------------------------------

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Runs kubectl against this cluster. A call that never reached the API server (it is busy on a small
        machine: TLS handshake timeouts, connection refused) is retried; anything it answered is not."""
        for attempt in range(_CONNECT_ATTEMPTS):
            result = subprocess.run(
                [str(self.bin_dir / "kubectl"), *args],
                input=input,
                capture_output=True,
                text=True,
                env=self.env(),
                timeout=timeout,
                check=False,
            )
            if result.returncode == 0 or not any(m in result.stderr for m in _NEVER_REACHED):
                break
            time.sleep(2 * (attempt + 1))
        if check and result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def apply(
        self,
        manifests: Iterable[dict[str, Any]],
        server_side: bool = False,
        namespace: str | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        args = ["apply", "-f", "-"] + (["--server-side"] if server_side else [])
        args += ["-n", namespace] if namespace else []
        return self.kubectl(*args, input=documents(manifests), check=check)

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def wait_crd_established(self, name: str, timeout: float = 60) -> None:
        """`kubectl wait` fails outright on a CRD whose status is not written yet: retry until it can wait."""
        results: list[subprocess.CompletedProcess[str]] = []

        def established() -> bool:
            results.append(self.kubectl(
                "wait", "--for=condition=Established", f"crd/{name}", "--timeout=10s", check=False
            ))
            return results[-1].returncode == 0

        try:
            wait(established, timeout, f"CRD {name} to be established")
        except TimeoutError as e:
            raise ClusterError(f"CRD {name} not established: {results[-1].stderr.strip()}") from e

    def service_account_kubeconfig(self, namespace: str, account: str, path: Path, hours: int = 4) -> Path:
        """A kubeconfig that authenticates as a ServiceAccount (with a real token from the API server),
        to run a component with exactly the permissions RBAC grants that account."""
        token = self.kubectl(
            "create", "token", account, "-n", namespace, f"--duration={hours}h"
        ).stdout.strip()
        admin = yaml.safe_load(self.kubeconfig.read_text())
        cluster = admin["clusters"][0]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [cluster],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [
                {
                    "name": account,
                    "context": {"cluster": cluster["name"], "user": account, "namespace": namespace},
                }
            ],
            "current-context": account,
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    # -- internals ------------------------------------------------------------------------------------

    def _lws_manager(self) -> LwsManager:
        return LwsManager(self.bin_dir, self.lws_dir, self.kubeconfig, self.kubeconfig.parent / "pki",
                          self.kubectl)

    def _start_lws(self, lws: LwsManager, crds: subprocess.Popen[str], deadline: float) -> None:
        """The manager starts once its CRDs exist (it watches LeaderWorkerSets from the start)."""
        try:
            _, err = crds.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            crds.kill()
            raise ClusterError("installing the LeaderWorkerSet CRDs timed out") from None
        if crds.returncode != 0:
            raise ClusterError(f"installing the LeaderWorkerSet CRDs failed: {err.strip()}")
        for crd in lws_crds:
            self.wait_crd_established(crd, timeout=max(1.0, deadline - time.monotonic()))
        try:
            lws.start(self.adopt)
        except (LwsError, OSError) as e:
            raise ClusterError(f"starting the LeaderWorkerSet manager: {e}") from None

    def _start_runner(self, deadline: float) -> None:
        self.runner_dir.mkdir(parents=True, exist_ok=True)
        ready = self.runner_dir / "ready"
        ready.unlink(missing_ok=True)
        log = (self.runner_dir / "podrunner.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "grok_devcluster.podrunner", "--kubeconfig", str(self.kubeconfig),
             "--state", str(self.runner_dir)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        self.adopt(proc.pid)  # `down` stops it (SIGTERM: it kills every pod's processes) with the rest
        (self.runner_dir / "pid").write_text(str(proc.pid))
        while not ready.exists():
            if proc.poll() is not None:
                raise ClusterError(
                    f"the pod runner exited ({proc.returncode}); see {self.runner_dir}/podrunner.log")
            if time.monotonic() > deadline:
                raise ClusterError("the pod runner did not start watching pods")
            time.sleep(0.1)

    def _kwokctl_config(self) -> dict[str, Any]:
        b = self.bin_dir
        return {
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
            "kind": "KwokctlConfiguration",
            "options": {
                "runtime": "binary",
                "kubeVersion": KUBE_VERSION,
                "kubeApiserverBinary": str(b / "kube-apiserver"),
                "kubeControllerManagerBinary": str(b / "kube-controller-manager"),
                "kubeSchedulerBinary": str(b / "kube-scheduler"),
                "kubectlBinary": str(b / "kubectl"),
                "etcdBinary": str(b / "etcd"),
                "kwokControllerBinary": str(b / "kwok"),
                "bindAddress": "127.0.0.1",
                "securePort": True,
                "kubeAuthorization": True,  # RBAC on: the operator's permissions are really checked
                "kubeAdmission": True,  # default admission plugins (ServiceAccount, quotas, ...)
                "disableQPSLimits": True,
                "quietPull": True,
                "cacheDir": str(self.workdir / "cache"),
                # `kubectl logs` and `port-forward` of run pods: the runner creates one of each per pod.
                "enableCRDs": ["Logs", "PortForward"],
            },
            "componentsPatches": [
                # kwokctl's default Service range is a /24 (254 addresses): too few for benchmarks with
                # hundreds of deployments, each with its Service.
                {
                    "name": "kube-apiserver",
                    "extraArgs": [{"key": "service-cluster-ip-range", "value": "10.96.0.0/16"}],
                },
                # One instance each, and nothing restarts them: without leader election they cannot lose a
                # lease on a loaded machine and exit (which would leave the cluster without controllers).
                {
                    "name": "kube-controller-manager",
                    "extraArgs": [
                        {"key": "service-cluster-ip-range", "value": "10.96.0.0/16"},
                        {"key": "leader-elect", "value": "false"},
                    ],
                },
                {"name": "kube-scheduler", "extraArgs": [{"key": "leader-elect", "value": "false"}]},
                # Pods KWOK simulates get loopback addresses too (the runner's come from another range).
                {"name": "kwok-controller", "extraArgs": [{"key": "cidr", "value": KWOK_POD_CIDR}]},
            ],
        }

    def _kwokctl(self, *args: str, check: bool = True) -> None:
        env = {**self.env(), "KWOK_WORKDIR": str(self.workdir)}
        result = subprocess.run(
            [str(self.bin_dir / "kwokctl"), "--name", self.name, *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if check and result.returncode != 0:
            raise ClusterError(f"kwokctl {' '.join(args)} failed:\n{result.stderr.strip()}")

    def _wait_ready(self, deadline: float) -> None:
        """Nodes Ready and the default ServiceAccount present (tests create pods right away)."""
        while True:
            node_list = self.get_json("nodes")["items"]
            ready = all(is_ready(n) for n in node_list)
            has_sa = (
                self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0
            )
            if node_list and ready and has_sa:
                return
            if time.monotonic() > deadline:
                raise ClusterError("timed out waiting for nodes to become Ready")
            time.sleep(0.5)
