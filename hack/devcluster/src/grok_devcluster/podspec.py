"""From a pod spec to what the pod runner executes, and from what ran back to a pod status (pure functions).

The runner has no containers: a container is a process group on this machine. What a kubelet gets from the
container runtime is simulated here in the open:
- the command line is the container's `command` (else the image's ENTRYPOINT) plus `args`, with `$(VAR)`
  references expanded from the container's environment as the kubelet does;
- volumes are folders on this machine; a path under a mount point, in an argument or an environment value,
  is rewritten to the folder behind it (no mount namespace, so the process sees the host's paths);
- every simulated node has a folder of its own, and a hostPath volume is that path inside the folder of the
  pod's node (`host_path_folder`): what one node writes there, pods on another node do not see (but paths
  named in $GROK_DEVCLUSTER_SHARED_HOST_PATHS, one folder for every node, as a network filesystem);
- the pod's network is one loopback address of its own; a process told to listen on all interfaces would
  listen on every interface of this machine, so that is refused before it starts;
- a pod's service-account volume cannot be at the standard in-cluster path, so a container that mounts it
  is given a kubeconfig made of the same files (`in_cluster_kubeconfig`) in $KUBECONFIG, the client's
  standard lookup when in-cluster configuration is absent;
- there is no cluster DNS: the one name pods are told to reach, the leader address a LeaderWorkerSet gives
  every pod of a group (`LWS_LEADER_ADDRESS`, `<name>-<group>.<subdomain>.<namespace>`), is resolved here to
  the leader pod's IP in the environment the process starts with (the name is kept in
  `GROK_DEVCLUSTER_LWS_LEADER_NAME`).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grok_devcluster.images import LocalImage

_VAR_RE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
# Mount points the host already provides with the same meaning (shared memory): not rewritten.
HOST_PATHS = ("/dev/shm",)
# Where a pod's service account (token, ca.crt, namespace) is mounted: where in-cluster clients read it.
SERVICE_ACCOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


# hostPaths every node sees as one folder, as a network filesystem mounted at the same path on every node
# (absolute paths, os.pathsep between them): the test run's compile cache, shared by all its engines.
SHARED_HOST_PATHS_ENV = "GROK_DEVCLUSTER_SHARED_HOST_PATHS"


def shared_host_paths(environ: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(p.rstrip("/") for p in environ.get(SHARED_HOST_PATHS_ENV, "").split(os.pathsep)
                 if p.startswith("/"))


def host_path_folder(nodes_root: Path, node: str, path: str, kind: str | None,
                     shared: tuple[str, ...] = ()) -> Path:
    """Where a hostPath volume lives for a pod on `node`: `path` inside that node's own folder, or `path`
    itself when it is one of the `shared` paths or under one. Types other than DirectoryOrCreate (or none)
    must exist already, as on a node."""
    if not node or "/" in node or node in (".", ".."):
        raise SpecError(f"hostPath {path!r}: the pod has no node to find it on")
    if any(path == s or path.startswith(f"{s}/") for s in shared):
        folder = Path(path)
    else:
        folder = nodes_root / node / path.lstrip("/")
    if kind in (None, "", "DirectoryOrCreate"):
        folder.mkdir(parents=True, exist_ok=True)
    elif kind == "Directory" and not folder.is_dir():
        raise SpecError(f"hostPath {path!r} (type Directory) does not exist on node {node}")
    return folder


class SpecError(ValueError):
    """The pod spec cannot be run here; the message says why (shown as the container's waiting message)."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined variables are replaced, `$$` is a literal `$`, and a reference
    to an undefined variable is left as written."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _VAR_RE.sub(sub, text)


@dataclass(frozen=True)
class PodFacts:
    """What the downward API can say about a pod once it has an address."""

    name: str
    namespace: str
    uid: str
    node_name: str
    pod_ip: str
    host_ip: str
    service_account: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]


def _field_ref(path: str, facts: PodFacts) -> str:
    simple = {
        "metadata.name": facts.name,
        "metadata.namespace": facts.namespace,
        "metadata.uid": facts.uid,
        "spec.nodeName": facts.node_name,
        "spec.serviceAccountName": facts.service_account,
        "status.podIP": facts.pod_ip,
        "status.podIPs": facts.pod_ip,
        "status.hostIP": facts.host_ip,
        "status.hostIPs": facts.host_ip,
    }
    if path in simple:
        return simple[path]
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        source = facts.labels if m.group(1) == "labels" else facts.annotations
        return source.get(m.group(2), "")
    raise SpecError(f"unsupported fieldRef {path!r}")


# Reads a key of a ConfigMap or Secret: (kind, namespace, name, key or None for all) -> {key: value}.
Lookup = Callable[[str, str, str], dict[str, str]]


def container_env(container: Mapping[str, Any], facts: PodFacts, image: LocalImage, lookup: Lookup,
                  base: Mapping[str, str], leader_ip: str | None = None) -> dict[str, str]:
    """The environment of one container: `base` (PATH, HOME, ...), the image's ENV, then `envFrom`, then
    `env` in order (each `value` may refer to the variables defined before it, as on a node).

    With `leader_ip`, the LeaderWorkerSet leader address is that IP (what the name would resolve to), from its
    definition on, so variables and arguments built from `$(LWS_LEADER_ADDRESS)` get it too."""
    env = {**base, **image.env}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind in ("configMapRef", "secretRef"):
            ref = source.get(kind)
            if ref:
                try:
                    values = lookup(kind, facts.namespace, ref["name"])
                except KeyError:
                    if ref.get("optional"):
                        continue
                    raise SpecError(f"{kind} {ref['name']!r} not found") from None
                env.update({prefix + k: v for k, v in values.items()})
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            if name == LEADER_ADDRESS and leader_ip:
                env[LEADER_NAME], env[name] = env[name], leader_ip
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[name] = _field_ref(source["fieldRef"]["fieldPath"], facts)
        elif "resourceFieldRef" in source:
            resource = source["resourceFieldRef"]["resource"]
            limits = (container.get("resources") or {}).get("limits") or {}
            requests = (container.get("resources") or {}).get("requests") or {}
            kind, _, res = resource.partition(".")
            env[name] = str((limits if kind == "limits" else requests).get(res, "0"))
        else:
            kind = "configMapRef" if "configMapKeyRef" in source else "secretRef"
            ref = source.get("configMapKeyRef") or source.get("secretKeyRef")
            try:
                env[name] = lookup(kind, facts.namespace, ref["name"])[ref["key"]]
            except KeyError:
                if ref.get("optional"):
                    continue
                raise SpecError(f"{kind} {ref['name']!r} has no key {ref['key']!r}") from None
    return env


# ---- LeaderWorkerSet groups without cluster DNS ---------------------------------------------------------

LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
LWS_GROUP_LABEL = "leaderworkerset.sigs.k8s.io/group-index"
LWS_WORKER_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"
LEADER_ADDRESS = "LWS_LEADER_ADDRESS"  # injected by LWS's pod webhook: a DNS name on a cluster
LEADER_NAME = "GROK_DEVCLUSTER_LWS_LEADER_NAME"  # that name, kept where the address became an IP


def wants_leader_address(container: Mapping[str, Any]) -> bool:
    """Whether the container is told its LeaderWorkerSet leader's address (a name only DNS could resolve)."""
    return any(v.get("name") == LEADER_ADDRESS and "valueFrom" not in v for v in container.get("env") or [])


def leader_selector(labels: Mapping[str, str]) -> dict[str, str] | None:
    """The labels of the leader pod of this pod's LeaderWorkerSet group (the same set and group, worker index
    0); None for a pod of no group."""
    if LWS_NAME_LABEL not in labels or LWS_GROUP_LABEL not in labels:
        return None
    return {LWS_NAME_LABEL: labels[LWS_NAME_LABEL], LWS_GROUP_LABEL: labels[LWS_GROUP_LABEL],
            LWS_WORKER_LABEL: "0"}


def is_leader(labels: Mapping[str, str]) -> bool:
    return leader_selector(labels) is not None and labels.get(LWS_WORKER_LABEL) == "0"


def leader_ip(candidates: Iterable[Mapping[str, Any]], selector: Mapping[str, str]) -> str | None:
    """The IP the leader address resolves to: that of the pod the selector picks (not being deleted: a group
    being recreated has a new leader coming) once it has one; None until then."""
    for pod in candidates:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        if meta.get("deletionTimestamp") or any(labels.get(k) != v for k, v in selector.items()):
            continue
        ip = (pod.get("status") or {}).get("podIP")
        if ip:
            return str(ip)
    return None


def command_line(container: Mapping[str, Any], image: LocalImage, env: Mapping[str, str]) -> list[str]:
    """`command` (or the image's ENTRYPOINT when unset) + `args`, each `$(VAR)`-expanded."""
    command = container.get("command")
    argv = list(command) if command else list(image.entrypoint)
    argv += list(container.get("args") or [])
    if not argv:
        raise SpecError("no command: the container sets none and the image has no ENTRYPOINT")
    return [expand(a, env) for a in argv]


def rewrite_paths(value: str, mounts: Mapping[str, str]) -> str:
    """A path at or under a mount point becomes the same path under the folder behind it (longest mount
    point first); anything else is returned unchanged. Also inside `--flag=/path` arguments."""
    flag, eq, rest = value.partition("=")
    if eq and flag.startswith("-"):
        return f"{flag}={rewrite_paths(rest, mounts)}"
    for mount in sorted(mounts, key=len, reverse=True):
        if value == mount or value.startswith(mount.rstrip("/") + "/"):
            return mounts[mount] + value[len(mount.rstrip("/")):]
    return value


def listen_address_error(argv: list[str], image: LocalImage, pod_ip: str) -> str | None:
    """Why this command line would listen beyond the pod's own address, or None when it would not: when it
    runs the image's entrypoint, every listen flag of the image must be given a loopback address (the pod's
    own, in practice). Other commands are the pod spec's to get right (they are told $(POD_IP) as well)."""
    if tuple(argv[:len(image.entrypoint)]) != image.entrypoint:
        return None
    for flag in image.listen_flags:
        value = None
        for i, arg in enumerate(argv):
            if arg == flag and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith(flag + "="):
                value = arg.split("=", 1)[1]
        if value is None:
            return (f"{flag} is not set, so the process would listen on all interfaces; pass the pod's "
                    f"address (e.g. {flag} $(POD_IP) with POD_IP from fieldRef status.podIP)")
        host = value.strip("[]")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            if host == "localhost":
                continue
            return f"{flag} {value!r} is not an IP address of this pod ({pod_ip})"
        if not address.is_loopback:
            return (f"{flag} {value} would listen beyond loopback; in the simulated cluster a pod's own "
                    f"address is {pod_ip}")
    return None


# ---- probes ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    kind: str  # httpGet | tcpSocket | grpc | exec
    host: str
    port: int
    path: str = "/"
    service: str = ""
    command: tuple[str, ...] = ()
    scheme: str = "HTTP"  # httpGet: HTTP, or HTTPS (the certificate unchecked, as the kubelet does)
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


def _port(value: int | str, container: Mapping[str, Any]) -> int:
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    for p in container.get("ports") or []:
        if p.get("name") == value:
            return int(p["containerPort"])
    raise SpecError(f"probe port {value!r} names no port of container {container.get('name')!r}")


def parse_probe(spec: Mapping[str, Any] | None, container: Mapping[str, Any], pod_ip: str) -> Probe | None:
    if not spec:
        return None
    timing = {
        "initial_delay": float(spec.get("initialDelaySeconds", 0)),
        "period": float(spec.get("periodSeconds", 10)),
        "timeout": float(spec.get("timeoutSeconds", 1)),
        "success_threshold": int(spec.get("successThreshold", 1)),
        "failure_threshold": int(spec.get("failureThreshold", 3)),
    }
    if "httpGet" in spec:
        h = spec["httpGet"]
        scheme = h.get("scheme", "HTTP")
        if scheme not in ("HTTP", "HTTPS"):
            raise SpecError(f"httpGet probe scheme {scheme!r}: HTTP or HTTPS")
        return Probe("httpGet", h.get("host") or pod_ip, _port(h["port"], container), h.get("path", "/"),
                     scheme=scheme, **timing)
    if "tcpSocket" in spec:
        t = spec["tcpSocket"]
        return Probe("tcpSocket", t.get("host") or pod_ip, _port(t["port"], container), **timing)
    if "grpc" in spec:
        g = spec["grpc"]
        return Probe("grpc", pod_ip, int(g["port"]), service=g.get("service", ""), **timing)
    if "exec" in spec:
        return Probe("exec", pod_ip, 0, command=tuple(spec["exec"].get("command") or ()), **timing)
    raise SpecError("a probe needs httpGet, tcpSocket, grpc or exec")


class ProbeState:
    """Counts consecutive results against a probe's thresholds, as the kubelet's prober does."""

    def __init__(self, probe: Probe, initially: bool) -> None:
        self.probe = probe
        self.ok = initially
        self._successes = 0
        self._failures = 0

    def record(self, success: bool) -> bool:
        """Records one result; returns the probe's verdict."""
        if success:
            self._successes, self._failures = self._successes + 1, 0
            if self._successes >= self.probe.success_threshold:
                self.ok = True
        else:
            self._failures, self._successes = self._failures + 1, 0
            if self._failures >= self.probe.failure_threshold:
                self.ok = False
        return self.ok


# ---- restarts -------------------------------------------------------------------------------------------

BACKOFF_INITIAL, BACKOFF_MAX = 10.0, 300.0


def restart_backoff(restarts: int) -> float:
    """The wait before the next start of a container restarted `restarts` times already, as the kubelet's
    crash-loop back-off: none the first time, then 10 s, doubled each time, at most 5 minutes."""
    return min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** max(0, restarts - 1)) if restarts else 0.0


def should_restart(policy: str, exit_code: int) -> bool:
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)


def exit_reason(exit_code: int, killed_by_oom: bool = False) -> str:
    if killed_by_oom:
        return "OOMKilled"
    return "Completed" if exit_code == 0 else "Error"


# A kubelet's limits on a termination message taken from the logs (FallbackToLogsOnError).
FALLBACK_MESSAGE_LINES = 80
FALLBACK_MESSAGE_BYTES = 2048


def falls_back_to_logs(spec: dict[str, Any], exit_code: int) -> bool:
    """Whether a kubelet would take this exit's termination message from the container's logs."""
    return spec.get("terminationMessagePolicy") == "FallbackToLogsOnError" and exit_code != 0


def termination_message(spec: dict[str, Any], exit_code: int, cri_log: str) -> str | None:
    """`terminated.message` as a kubelet sets it for a container that wrote no termination-message file
    (the runner gives none): with `terminationMessagePolicy: FallbackToLogsOnError` and a failure, the tail of
    its output (the last 80 lines, at most 2 KiB); otherwise none."""
    if not falls_back_to_logs(spec, exit_code):
        return None
    # CRI log lines: "<time> <stream> <tag> <text>".
    split = (line.split(" ", 3) for line in cri_log.splitlines())
    lines = [parts[3] if len(parts) == 4 else "" for parts in split]
    tail = "\n".join(lines[-FALLBACK_MESSAGE_LINES:]).encode()[-FALLBACK_MESSAGE_BYTES:]
    return tail.decode(errors="ignore") or None


# ---- status ---------------------------------------------------------------------------------------------


def condition(kind: str, status: bool, now: str, reason: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": kind, "status": "True" if status else "False", "lastTransitionTime": now}
    if reason and not status:
        out["reason"] = reason
    return out


def pod_phase(states: list[dict[str, Any]], policy: str, started: bool) -> str:
    """Pending until every container has started once; then Running, or Succeeded/Failed once all have
    terminated for good (restartPolicy Never, or OnFailure and all exited 0)."""
    if not started:
        return "Pending"
    terminated = [s["state"].get("terminated") for s in states]
    if states and all(terminated) and policy != "Always":
        codes = [t["exitCode"] for t in terminated if t]
        if all(c == 0 for c in codes):
            return "Succeeded"
        if policy == "Never":
            return "Failed"
    return "Running"


def in_cluster_kubeconfig(server: str, account_folder: str, namespace: str) -> dict[str, Any]:
    """A kubeconfig holding what in-cluster configuration reads: the API server, and the CA and token of the
    pod's service-account volume (the folder behind SERVICE_ACCOUNT_PATH), so the pod authenticates as its
    own ServiceAccount with the same files."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "in-cluster", "cluster": {
            "server": server, "certificate-authority": f"{account_folder}/ca.crt"}}],
        "users": [{"name": "service-account", "user": {"tokenFile": f"{account_folder}/token"}}],
        "contexts": [{"name": "in-cluster", "context": {
            "cluster": "in-cluster", "user": "service-account", "namespace": namespace}}],
        "current-context": "in-cluster",
    }
