"""The pod runner: the kubelet of the simulated GPU nodes for the pods of this project's images.

KWOK keeps simulating nodes and every other pod (status only); pods with a container image of this project
(`images.owned`) are excluded from KWOK's stages and run here for real, as process groups on this machine:
- each gets a loopback address of its own (`status.podIP`), which its processes are told to listen on;
- its containers' command lines, environment and volumes come from the pod spec (`podspec`);
- startup, readiness and liveness probes drive the Ready condition and restarts, with the kubelet's
  back-off (CrashLoopBackOff);
- deletion is the kubelet's: not Ready at once, SIGTERM, the pod's grace period, SIGKILL, then the pod is
  released (deleted with grace 0);
- output goes to CRI-format log files that KWOK's kubelet API serves to `kubectl logs` (a `Logs` object per
  pod), and `kubectl port-forward` reaches the pod's ports (a `PortForward` object per pod);
- with no cluster DNS, a LeaderWorkerSet pod's `LWS_LEADER_ADDRESS` is resolved to its group leader's pod IP
  in the environment its containers start with (they wait in ContainerCreating until the leader has one).

Run by `DevCluster.up` as `python -m grok_devcluster.podrunner`; SIGTERM stops every pod it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from grok_devcluster import images, podspec
from grok_devcluster.podspec import PodFacts, Probe, ProbeState, SpecError

log = logging.getLogger("grok_devcluster.podrunner")

# Pods run here get addresses from this range; those KWOK simulates, from cluster.KWOK_POD_CIDR.
RUNNER_POD_CIDR = "127.65.0.0/16"
HOST_IP = "127.0.0.1"
TICK = 0.1  # seconds between checks of a pod's processes (cheap: a poll and a few comparisons)
KWOK_API = ("kwok.x-k8s.io", "v1alpha1")
LEADER_RETRY = 0.5  # seconds between looks for a LeaderWorkerSet leader's address while it has none
# Seconds between re-reads of a running pod's Secret and ConfigMap volumes (the kubelet's sync period is about
# a minute; shorter here, so that a test of "a changed Secret reaches the pod" waits seconds, not minutes).
VOLUME_SYNC = 3.0
_PR_SET_PDEATHSIG = 1


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AddressPool:
    """Loopback addresses for pods: Linux answers on all of 127.0.0.0/8 without configuring anything.

    Machine-wide: clusters running side by side (two test sessions, the demo beside the tests) must never give
    two pods one address, or a probe or a client of one cluster reaches the other's pod. An address is held
    by a file named after it in `registry`, created exclusively and holding the runner's pid; a file whose
    runner is gone is taken over."""

    def __init__(self, cidr: str = RUNNER_POD_CIDR, registry: Path | None = None) -> None:
        self._candidates = [str(ip) for ip in ipaddress.ip_network(cidr).hosts() if int(ip) & 0xFF > 1]
        # A fixed place (not $TMPDIR, which differs between sessions): every runner of this user sees it.
        self._registry = registry or Path("/tmp") / f"grok-pod-addresses-{os.getuid()}"
        self._registry.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _claim(self, ip: str) -> bool:
        path = self._registry / ip
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = int(path.read_text() or "0")
            except (OSError, ValueError):
                return False
            if owner == os.getpid() or _alive(owner):
                return False
            path.unlink(missing_ok=True)  # its runner is gone: free (a racing runner may win it: fine)
            return self._claim(ip)
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True

    def take(self) -> str:
        with self._lock:
            for ip in self._candidates:
                if self._claim(ip):
                    return ip
        raise RuntimeError(f"no free pod address left in {RUNNER_POD_CIDR}")

    def give_back(self, ip: str) -> None:
        with self._lock:
            (self._registry / ip).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Pods run at a lower CPU priority than the control plane, which on a cluster has machines of its own: on a
# 2-core machine a busy engine would otherwise starve the API server (TLS handshakes time out).
POD_NICE = 10


_AUTOGROUP = "/proc/self/autogroup"


def lower_priority(nice: int = POD_NICE) -> None:
    """For a process in a session of its own: lowers the priority of its whole scheduling group (with the
    kernel's autogroup scheduling a session competes as one group, so its nice value alone does not count
    against other sessions), and its own. Plain system calls only: it runs in forked children of threaded
    processes (as a preexec_fn)."""
    with contextlib.suppress(OSError):
        fd = os.open(_AUTOGROUP, os.O_WRONLY)
        try:
            os.write(fd, str(nice).encode())
        finally:
            os.close(fd)
    os.nice(nice)


# Looked up once, here: in a forked child of this threaded process only async-signal-safe work may run.
_LIBC = ctypes.CDLL(None, use_errno=True)


def _prepare_child() -> None:
    """In the child before exec: SIGKILL when the runner's thread that started it dies (the runner crashed),
    so that no pod process outlives the runner; and the pods' lower priority."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    lower_priority()


class CriLog:
    """A container's output in the CRI log format that KWOK's `kubectl logs` reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")

    def pump(self, stream: IO[bytes], name: str) -> threading.Thread:
        def run() -> None:
            with stream:
                for raw in iter(stream.readline, b""):
                    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                    text = raw.decode(errors="replace").rstrip("\n")
                    with self._lock:
                        if not self._file.closed:
                            self._file.write(f"{stamp} {name} F {text}\n")
                            self._file.flush()

        t = threading.Thread(target=run, daemon=True, name=f"log-{self.path.name}-{name}")
        t.start()
        return t

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _write_atomically(folder: Path, files: dict[str, str]) -> None:
    """A volume's files, swapped in at once as the kubelet does: written into a fresh hidden folder, then the
    `..data` link turned to it, each top-level name a link through `..data` (names gone are removed). A reader
    sees the old set or the new one, never half of each."""
    folder.mkdir(parents=True, exist_ok=True)
    current = folder / "..data"
    if current.is_symlink() and _read_folder(folder / current.readlink()) == files:
        return
    fresh = Path(tempfile.mkdtemp(prefix="..", dir=folder))
    for path, content in files.items():
        target = fresh / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    link = folder / "..data_tmp"
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    link.symlink_to(fresh.name)
    old = current.readlink() if current.is_symlink() else None
    link.replace(current)
    top = {Path(path).parts[0] for path in files}
    for name in top:
        entry = folder / name
        if not entry.is_symlink():
            entry.symlink_to(Path("..data") / name)
    for entry in folder.iterdir():
        if not entry.name.startswith("..") and entry.name not in top and entry.is_symlink():
            entry.unlink()
    if old is not None:
        shutil.rmtree(folder / old, ignore_errors=True)


def _read_folder(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in folder.rglob("*") if p.is_file()}


# A kubelet's probes use no proxy, and check no certificate (HTTPS probes of a pod serving its own).
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                        urllib.request.HTTPSHandler(context=ssl._create_unverified_context()))


def run_probe(probe: Probe, env: dict[str, str]) -> bool:
    try:
        if probe.kind == "httpGet":
            url = f"{probe.scheme.lower()}://{probe.host}:{probe.port}{probe.path}"
            with _NO_PROXY.open(url, timeout=probe.timeout) as r:
                return 200 <= r.status < 400
        if probe.kind == "tcpSocket":
            with socket.create_connection((probe.host, probe.port), timeout=probe.timeout):
                return True
        if probe.kind == "grpc":
            import grpc
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            options = [("grpc.enable_http_proxy", 0)]
            with grpc.insecure_channel(f"{probe.host}:{probe.port}", options=options) as ch:
                resp = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=probe.service), timeout=probe.timeout)
                return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
        if probe.kind == "exec":
            done = subprocess.run(list(probe.command), env=env, capture_output=True, timeout=probe.timeout,
                                  check=False)
            return done.returncode == 0
    except (OSError, urllib.error.URLError, subprocess.TimeoutExpired):
        return False
    except Exception as e:  # grpc.RpcError and the like: a failed probe, not a crashed runner
        log.debug("probe %s failed: %s", probe, e)
        return False
    return False


class LeaderPending(Exception):
    """The pod's LeaderWorkerSet leader has no address yet: its containers wait (the message says so)."""


def _exit_status(pid: int) -> int | None:
    """The exit code of a child that has exited, without reaping it (so that its process group cannot be
    reused while the runner still signals it); None while it runs. Killed by signal N: 128 + N."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    if info is None or info.si_pid == 0:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else 128 + info.si_status


@dataclass
class Run:
    """One start of a container: its process, its log and the threads that watch it."""

    proc: subprocess.Popen[bytes]
    started_at: str
    log: CriLog
    pumps: list[threading.Thread]
    stop: threading.Event = field(default_factory=threading.Event)  # ends its probes
    exited: bool = False  # reaped: its pid (and process group) may be reused from then on
    stopping: bool = False  # a stop (SIGTERM, grace, SIGKILL) is under way


@dataclass
class Container:
    """One container of a pod: its spec, its current run and what the kubelet would report. Fields are
    changed under `lock` (the pod's thread and its probe threads share them)."""

    spec: dict[str, Any]
    init: bool = False
    restart_count: int = 0
    run: Run | None = None
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    next_start: float | None = 0.0  # monotonic time of the next start attempt; None: never again
    start_errors: int = 0
    ready: bool = False
    started: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def finished(self) -> bool:
        """Terminated for good (restartPolicy says no more starts)."""
        return self.next_start is None and "terminated" in self.state

    @property
    def succeeded(self) -> bool:
        return self.finished and self.state["terminated"]["exitCode"] == 0

    def status(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": self.state,
        }
        if self.run is not None:
            out["containerID"] = f"grok-runner://{self.run.proc.pid}"
        if self.last_state:
            out["lastState"] = self.last_state
        return out


class PodWorker(threading.Thread):
    """Runs one pod from its first sight to its release (deletion), or to its end (a Job's pod)."""

    def __init__(self, runner: Runner, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        super().__init__(daemon=True, name=f"pod-{meta['namespace']}/{meta['name']}")
        self.runner = runner
        self.pod = pod
        self.uid = meta["uid"]
        self.namespace, self.pod_name = meta["namespace"], meta["name"]
        self.dir = runner.state / "pods" / f"{self.namespace}_{self.pod_name}_{self.uid[:8]}"
        spec = pod["spec"]
        self.policy = spec.get("restartPolicy", "Always")
        self.init_containers = [Container(c, init=True) for c in spec.get("initContainers") or []]
        self.containers = [Container(c) for c in spec.get("containers") or []]
        self.ip = ""
        self.start_time = now_rfc3339()
        self._conditions: dict[str, dict[str, Any]] = {}
        self._last_status: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._gone = threading.Event()
        self.deleting = False  # the pod has a deletion timestamp: not Ready, then stopped and released

    @property
    def all_containers(self) -> list[Container]:
        return [*self.init_containers, *self.containers]

    # -- from the watch ---------------------------------------------------------------------------------

    def update(self, pod: dict[str, Any]) -> None:
        with self._lock:
            self.pod = pod

    def gone(self) -> None:
        """The pod object is deleted (force-deleted, or the runner stops): stop its processes now."""
        self._gone.set()

    # -- the pod's life ---------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self.ip = self.runner.addresses.take()
            self.dir.mkdir(parents=True, exist_ok=True)
            self._publish()
            self.runner.create_debug_objects(self.pod, self.ip, self._log_paths())
            synced = time.monotonic()
            while not self._gone.is_set():
                if self._deletion_requested():
                    self.deleting = True
                    break
                if not self._step():
                    break  # every container has terminated for good (a Job's pod)
                self._publish()
                if time.monotonic() - synced > VOLUME_SYNC:
                    self.runner.sync_file_volumes(self.pod, self.dir)
                    synced = time.monotonic()
                time.sleep(TICK)
        except Exception:  # a bug of the runner's: the pod keeps its object, with what was last published
            log.exception("pod %s/%s: runner error", self.namespace, self.pod_name)
        finally:
            self._terminate_all(self._grace_seconds() if self.deleting and not self._gone.is_set() else 0)
            if not self._gone.is_set():
                with contextlib.suppress(Exception):
                    self._publish()
            if self.ip:
                self.runner.addresses.give_back(self.ip)
            self.runner.release(self, delete=self.deleting and not self._gone.is_set())

    def _deletion_requested(self) -> bool:
        with self._lock:
            return bool(self.pod["metadata"].get("deletionTimestamp"))

    def _grace_seconds(self) -> float:
        with self._lock:
            meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        return float(grace)

    def _facts(self) -> PodFacts:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        return PodFacts(meta["name"], meta["namespace"], meta["uid"], spec.get("nodeName", ""), self.ip,
                        HOST_IP, spec.get("serviceAccountName", "default"), meta.get("labels") or {},
                        meta.get("annotations") or {})

    def _log_paths(self) -> dict[str, tuple[Path, Path]]:
        return {c.name: (self.dir / f"{c.name}.log", self.dir / f"{c.name}.previous.log")
                for c in self.all_containers}

    # -- containers -------------------------------------------------------------------------------------

    def _step(self) -> bool:
        """One look at every container: exits recorded, (re)starts due made. Init containers first, one
        at a time, each to success. False once nothing will run any more."""
        for c in self.init_containers:
            if c.succeeded:
                continue
            self._drive(c)
            return not c.finished  # failed for good (restartPolicy Never): the pod has failed
        for c in self.containers:
            self._drive(c)
        return not all(c.finished for c in self.containers)

    def _drive(self, c: Container) -> None:
        with c.lock:
            run = c.run
            if run is not None and not run.exited:
                code = _exit_status(run.proc.pid)
                if code is None:
                    return
                self._record_exit(c, run, code)
            if c.next_start is None or time.monotonic() < c.next_start:
                return
            if run is not None and run.exited:
                c.restart_count += 1
            self._start(c)

    def _record_exit(self, c: Container, run: Run, code: int) -> None:
        """The container's main process has exited: the rest of the container goes with it, as when a
        runtime tears a container down; the restart policy decides what comes next. Called under c.lock."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.proc.pid, signal.SIGKILL)  # the group still exists: its leader is not reaped yet
        run.proc.wait()
        run.exited = True
        run.stop.set()
        self.runner.untrack(run.proc.pid)
        for t in run.pumps:  # the pipes close with the last process of the group
            t.join(timeout=10)
        run.log.close()
        c.ready = False
        terminated = {"exitCode": code, "reason": podspec.exit_reason(code), "startedAt": run.started_at,
                      "finishedAt": now_rfc3339(), "containerID": f"grok-runner://{run.proc.pid}"}
        if podspec.falls_back_to_logs(c.spec, code):  # only then is the log read (a server's can be large)
            with contextlib.suppress(OSError):
                message = podspec.termination_message(c.spec, code, run.log.path.read_text(errors="replace"))
                if message:
                    terminated["message"] = message
        if c.init:  # an init container runs to success: restarted on failure unless the policy is Never
            restart = code != 0 and self.policy != "Never"
        else:
            restart = podspec.should_restart(self.policy, code)
        if not restart or self.deleting:
            c.state, c.next_start = {"terminated": terminated}, None
            return
        delay = podspec.restart_backoff(c.restart_count)
        c.last_state = {"terminated": terminated}
        c.next_start = time.monotonic() + delay
        c.state = ({"waiting": {"reason": "CrashLoopBackOff", "message": (
            f"back-off {delay:.0f}s restarting failed container={c.name} pod={self.pod_name}")}}
            if delay > 0 else {"terminated": terminated})

    def _cannot_start(self, c: Container, reason: str, message: str) -> None:
        """A container that cannot be started yet (its image, its config): waiting, retried with back-off,
        as the kubelet retries on every sync (a Secret may be created later)."""
        c.start_errors += 1
        if reason == "ErrImagePull" and c.start_errors > 1:
            reason = "ImagePullBackOff"
        c.state = {"waiting": {"reason": reason, "message": message}}
        c.next_start = time.monotonic() + podspec.restart_backoff(c.start_errors)

    def _start(self, c: Container) -> None:
        """Starts the container (called under c.lock)."""
        image_ref = str(c.spec.get("image", ""))
        image = images.resolve(image_ref)
        if image is None:
            self._cannot_start(c, "ErrImagePull", (
                f"image {image_ref!r} is not one the simulated cluster can run: its pod runner maps only "
                f"{', '.join(p for p, _ in images.TABLE)} to local environments"))
            return
        if not image.bin_dir.is_dir():
            self._cannot_start(c, "ErrImagePull", (
                f"the local stand-in of image {image_ref!r} ({image.bin_dir.parent}) is missing: "
                "run hack/setup-python.sh"))
            return
        try:
            mounts = self.runner.volume_mounts(self.pod, c.spec, self.dir)
            base = {"PATH": f"{image.bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
                    "HOME": str(self.dir / "home"), "HOSTNAME": self.pod_name, "LANG": "C.UTF-8",
                    **self.runner.service_env}
            account = mounts.get(podspec.SERVICE_ACCOUNT_PATH)
            if account is not None:  # the in-cluster files are elsewhere: the same files as a kubeconfig
                kubeconfig = self.dir / f"{c.name}.kubeconfig"
                kubeconfig.write_text(json.dumps(podspec.in_cluster_kubeconfig(
                    self.runner.api_server, account, self.namespace)))
                base["KUBECONFIG"] = str(kubeconfig)
                # Without the service variables in-cluster configuration is absent by construction: on a
                # machine that is itself a pod, the host's own service account is never taken for the pod's.
                for name in self.runner.service_env:
                    base.pop(name)
            leader = self._leader_ip(c.spec)
            env = podspec.container_env(c.spec, self._facts(), image, self.runner.lookup, base, leader)
            env = {k: podspec.rewrite_paths(v, mounts) for k, v in env.items()}
            argv = [podspec.rewrite_paths(a, mounts) for a in podspec.command_line(c.spec, image, env)]
            problem = podspec.listen_address_error(argv, image, self.ip)
            if problem:
                raise SpecError(problem)
            probes = [podspec.parse_probe(c.spec.get(k), c.spec, self.ip)
                      for k in ("startupProbe", "readinessProbe", "livenessProbe")]
            workdir = podspec.rewrite_paths(c.spec.get("workingDir") or str(self.dir / "home"), mounts)
            Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
            Path(workdir).mkdir(parents=True, exist_ok=True)
        except LeaderPending as e:  # not an error (the group starts together): looked at again shortly
            c.state = {"waiting": {"reason": "ContainerCreating", "message": str(e)}}
            c.next_start = time.monotonic() + LEADER_RETRY
            return
        except (SpecError, OSError, KeyError) as e:
            self._cannot_start(c, "CreateContainerConfigError", str(e))
            return
        current, previous = self._log_paths()[c.name]
        if current.exists():
            current.replace(previous)  # `kubectl logs --previous`: the run before this one
        log_file = CriLog(current)
        executable = shutil.which(argv[0], path=env["PATH"]) or argv[0]
        try:
            proc = subprocess.Popen([executable, *argv[1:]], env=env, cwd=workdir, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                    preexec_fn=_prepare_child)  # noqa: PLW1509
        except OSError as e:
            log_file.close()
            self._cannot_start(c, "RunContainerError", f"cannot start {argv[0]!r}: {e}")
            return
        self.runner.track(proc.pid)
        assert proc.stdout is not None and proc.stderr is not None
        run = Run(proc, now_rfc3339(), log_file, [log_file.pump(proc.stdout, "stdout"),
                                                   log_file.pump(proc.stderr, "stderr")])
        c.run, c.start_errors = run, 0
        c.state = {"running": {"startedAt": run.started_at}}
        c.ready, c.started = False, False
        self._start_probes(c, run, env, *probes)
        log.info("pod %s/%s: container %s started (pid %d): %s", self.namespace, self.pod_name, c.name,
                 proc.pid, " ".join(argv))

    def _leader_ip(self, container: dict[str, Any]) -> str | None:
        """What this pod's LWS_LEADER_ADDRESS resolves to (no cluster DNS here): its own IP for the group's
        leader, the leader pod's for a worker; None when the container is not told a leader address."""
        if not podspec.wants_leader_address(container):
            return None
        labels = self.pod["metadata"].get("labels") or {}
        selector = podspec.leader_selector(labels)
        if selector is None:
            return None
        if podspec.is_leader(labels):
            return self.ip
        ip = podspec.leader_ip(self.runner.pods(self.namespace, selector), selector)
        if ip is None:
            raise LeaderPending(
                f"waiting for the leader of group {selector[podspec.LWS_GROUP_LABEL]} of LeaderWorkerSet "
                f"{selector[podspec.LWS_NAME_LABEL]!r} to have an address ({podspec.LEADER_ADDRESS} "
                "resolves to it: the simulated cluster has no DNS)")
        return ip

    def _start_probes(self, c: Container, run: Run, env: dict[str, str], startup: Probe | None,
                      readiness: Probe | None, liveness: Probe | None) -> None:
        """The kubelet's prober for one run: the startup probe first (the others wait for it; past its
        failure threshold the container is stopped and restarted), then readiness and liveness."""

        def current() -> bool:  # still this run's to judge (not exited, not replaced, not being stopped)
            return c.run is run and not run.exited and not run.stop.is_set()

        def loop() -> None:
            if startup is not None:
                if run.stop.wait(startup.initial_delay):
                    return
                failures = 0
                while not run_probe(startup, env):
                    failures += 1
                    if failures >= startup.failure_threshold:
                        self._kill(c, run, "startup probe failed")
                        return
                    if run.stop.wait(startup.period):
                        return
            with c.lock:
                if not current():
                    return
                c.started = True
                if readiness is None:
                    c.ready = not self.deleting
            for probe, on_result in ((readiness, self._on_readiness), (liveness, self._on_liveness)):
                if probe is not None:
                    threading.Thread(target=self._probe_loop, args=(c, run, probe, env, on_result),
                                     daemon=True).start()

        threading.Thread(target=loop, daemon=True, name=f"probes-{self.pod_name}-{c.name}").start()

    def _probe_loop(self, c: Container, run: Run, probe: Probe, env: dict[str, str], on_result: Any) -> None:
        state = ProbeState(probe, initially=on_result == self._on_liveness)
        if run.stop.wait(probe.initial_delay):
            return
        while not run.stop.is_set():
            ok = state.record(run_probe(probe, env))
            on_result(c, run, ok)
            if run.stop.wait(probe.period):
                return

    def _on_readiness(self, c: Container, run: Run, ok: bool) -> None:
        with c.lock:
            if c.run is run and not run.exited and not run.stop.is_set():
                c.ready = ok and not self.deleting

    def _on_liveness(self, c: Container, run: Run, ok: bool) -> None:
        if not ok:
            self._kill(c, run, "liveness probe failed")

    def _kill(self, c: Container, run: Run, why: str) -> None:
        """The kubelet's answer to a failed liveness or startup probe: stop the container (SIGTERM, the
        pod's grace period, SIGKILL); its exit is then recorded and the restart policy applies."""
        with c.lock:
            if c.run is not run or run.exited or run.stopping:
                return
            run.stopping = True
            run.stop.set()
            c.ready = False
        log.info("pod %s/%s: container %s: %s, restarting it", self.namespace, self.pod_name, c.name, why)
        self.runner.events.append((self.pod, "Warning", "Unhealthy", f"Container {c.name} {why}"))
        threading.Thread(target=self._stop_run, args=(c, run, self._grace_seconds()), daemon=True).start()

    @staticmethod
    def _stop_run(c: Container, run: Run, grace: float) -> None:
        """As a runtime stops a container: SIGTERM to its main process only (it shuts its children down
        itself, as a server drains its engine), up to `grace` seconds, then SIGKILL to the whole container
        (its process group). Never signals a run already reaped (its pid could belong to another)."""
        with c.lock:
            if run.exited:
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(run.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with c.lock:
                if run.exited or _exit_status(run.proc.pid) is not None:
                    return
            time.sleep(0.05)
        with c.lock:
            if not run.exited:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(run.proc.pid, signal.SIGKILL)

    def _terminate_all(self, grace: float) -> None:
        """Every container stopped (in parallel, each with the grace period), then its exit recorded."""
        with self._lock:
            self.deleting = self.deleting or self._gone.is_set()
        stoppers = []
        for c in self.all_containers:
            with c.lock:
                c.ready = False
                run = c.run
                if run is None or run.exited:
                    continue
                run.stop.set()
                run.stopping = True
            t = threading.Thread(target=self._stop_run, args=(c, run, grace))
            t.start()
            stoppers.append(t)
        self._publish_quietly()
        for t in stoppers:
            t.join()
        for c in self.all_containers:
            with c.lock:
                if c.run is not None and not c.run.exited:
                    code = _exit_status(c.run.proc.pid)
                    while code is None:  # SIGKILLed a moment ago: it goes at once
                        time.sleep(0.05)
                        code = _exit_status(c.run.proc.pid)
                    self._record_exit(c, c.run, code)
                c.next_start = None

    # -- status ---------------------------------------------------------------------------------------

    def _condition(self, kind: str, status: bool, reason: str | None = None) -> dict[str, Any]:
        previous = self._conditions.get(kind)
        if previous is not None and previous["status"] == ("True" if status else "False"):
            return previous
        self._conditions[kind] = podspec.condition(kind, status, now_rfc3339(), reason)
        return self._conditions[kind]

    def _publish_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self._publish()

    def _publish(self) -> None:
        """Writes the pod's status when it changed (a status subresource patch, like a kubelet's)."""
        with contextlib.ExitStack() as locks:
            for c in self.all_containers:
                locks.enter_context(c.lock)
            containers = [c.status() for c in self.containers]
            inits = [c.status() for c in self.init_containers]
            init_done = all(c.succeeded for c in self.init_containers)
            init_failed = any(c.finished and not c.succeeded for c in self.init_containers)
            all_ready = (bool(self.containers) and all(c.ready for c in self.containers)
                         and not self.deleting)
            started = init_done and all(c.run is not None for c in self.containers)
        conditions = [
            self._condition("PodReadyToStartContainers", True),
            self._condition("Initialized", init_done, "ContainersNotInitialized"),
            self._condition("ContainersReady", all_ready, "ContainersNotReady"),
            self._condition("Ready", all_ready, "ContainersNotReady"),
        ]
        status: dict[str, Any] = {
            "phase": "Failed" if init_failed else podspec.pod_phase(containers, self.policy, started),
            "conditions": conditions,
            "containerStatuses": containers,
            "hostIP": HOST_IP,
            "hostIPs": [{"ip": HOST_IP}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": self.start_time,
        }
        if inits:
            status["initContainerStatuses"] = inits
        if status == self._last_status:
            return
        if self.runner.patch_status(self.namespace, self.pod_name, self.uid, status):
            self._last_status = status


class Runner:
    def __init__(self, kubeconfig: Path, state: Path) -> None:
        config.load_kube_config(str(kubeconfig))
        self.api = client.CoreV1Api()
        # What a kubelet gives every container for the `kubernetes` Service. There is no kube-proxy here to
        # route its ClusterIP, so pods are given the API server's own (loopback) address instead.
        self.api_server = client.Configuration.get_default_copy().host
        api_server = urllib.parse.urlsplit(self.api_server)
        self.service_env = {"KUBERNETES_SERVICE_HOST": api_server.hostname or "127.0.0.1",
                            "KUBERNETES_SERVICE_PORT": str(api_server.port or 443)}
        self.custom = client.CustomObjectsApi()
        self.state = state
        self.addresses = AddressPool()
        self.workers: dict[str, PodWorker] = {}
        self.finished: set[str] = set()  # pods whose worker has ended: never started again
        self.events: list[tuple[dict[str, Any], str, str, str]] = []
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        (state / "pgids").mkdir(parents=True, exist_ok=True)

    # -- bookkeeping of process groups (so that `down` can clean up even after a runner crash) -----------

    def track(self, pgid: int) -> None:
        (self.state / "pgids" / str(pgid)).touch()

    def untrack(self, pgid: int) -> None:
        (self.state / "pgids" / str(pgid)).unlink(missing_ok=True)

    # -- API helpers ------------------------------------------------------------------------------------

    def patch_status(self, namespace: str, name: str, uid: str, status: dict[str, Any]) -> bool:
        """False when it did not go through (written again at the pod's next change or tick)."""
        body = {"metadata": {"uid": uid}, "status": status}
        try:
            self.api.patch_namespaced_pod_status(
                name, namespace, body, _content_type="application/strategic-merge-patch+json")
            return True
        except ApiException as e:
            if e.status not in (404, 409, 422):
                log.warning("status of %s/%s: %s", namespace, name, e.reason)
        except Exception as e:  # the API server busy or unreachable for a moment
            log.warning("status of %s/%s: %s: %s", namespace, name, type(e).__name__, e)
        return False

    def pods(self, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        """The pods of a namespace with these labels (none when the API server does not answer now)."""
        import json

        try:
            answer = self.api.list_namespaced_pod(
                namespace, label_selector=",".join(f"{k}={v}" for k, v in selector.items()),
                _preload_content=False)
            return list(json.loads(answer.data)["items"])
        except Exception as e:  # looked at again shortly, as the container waits
            log.warning("pods of %s: %s: %s", namespace, type(e).__name__, e)
            return []

    def lookup(self, kind: str, namespace: str, name: str) -> dict[str, str]:
        import base64

        try:
            if kind == "secretRef":
                data = self.api.read_namespaced_secret(name, namespace).data or {}
                return {k: base64.b64decode(v).decode() for k, v in data.items()}
            return dict(self.api.read_namespaced_config_map(name, namespace).data or {})
        except ApiException as e:
            if e.status == 404:
                raise KeyError(name) from None
            raise

    def volume_mounts(self, pod: dict[str, Any], container: dict[str, Any], pod_dir: Path) -> dict[str, str]:
        """Mount path -> folder on this machine: a claim's bound volume (its hostPath), an emptyDir's fresh
        folder, a hostPath inside the folder of the pod's node (<state>/nodes/<node>/<path>)."""
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        out: dict[str, str] = {}
        for m in container.get("volumeMounts") or []:
            path = m["mountPath"]
            if path in podspec.HOST_PATHS:
                continue
            v = volumes.get(m["name"])
            if v is None:
                raise SpecError(f"volumeMount {m['name']!r} names no volume of the pod")
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                folder = self._claim_folder(pod["metadata"]["namespace"], claim)
            elif "emptyDir" in v:
                folder = pod_dir / "volumes" / m["name"]
                folder.mkdir(parents=True, exist_ok=True)
            elif "hostPath" in v:  # the node's own folder: what one node writes, another does not see
                folder = podspec.host_path_folder(self.state / "nodes", pod["spec"].get("nodeName") or "",
                                                  v["hostPath"]["path"], v["hostPath"].get("type"),
                                                  podspec.shared_host_paths(os.environ))
            elif any(k in v for k in ("projected", "configMap", "secret", "downwardAPI")):
                folder = self._file_volume(pod, v, pod_dir / "volumes" / m["name"])
            else:
                raise SpecError(f"volume {m['name']!r}: only persistentVolumeClaim, emptyDir, hostPath, "
                                "configMap, secret, downwardAPI and projected volumes are simulated")
            if m.get("subPath"):
                folder = folder / m["subPath"]
            out[path] = str(folder)
        return out

    def _file_volume(self, pod: dict[str, Any], volume: dict[str, Any], folder: Path) -> Path:
        """configMap, secret, downwardAPI and projected volumes (the ServiceAccount token among them): their
        files written into a folder of the pod's, as the kubelet does."""
        meta = pod["metadata"]
        namespace = meta["namespace"]
        sources = volume["projected"].get("sources") or [] if "projected" in volume else [volume]
        files: dict[str, str] = {}
        for source in sources:
            for kind, lookup_kind in (("configMap", "configMapRef"), ("secret", "secretRef")):
                ref = source.get(kind)
                if ref is None:
                    continue
                name = ref.get("name") or ref.get("secretName")
                try:
                    data = self.lookup(lookup_kind, namespace, name)
                except KeyError:
                    if ref.get("optional"):
                        continue
                    raise SpecError(f"{kind} {name!r} not found") from None
                items = ref.get("items")
                files.update({i.get("path", i["key"]): data[i["key"]] for i in items} if items else data)
            api = source.get("downwardAPI")
            if api is not None:
                for item in api.get("items") or []:
                    path = item["fieldRef"]["fieldPath"]
                    value = {"metadata.namespace": namespace, "metadata.name": meta["name"],
                             "metadata.uid": meta["uid"]}.get(path)
                    if value is None:
                        raise SpecError(f"downwardAPI volume field {path!r} is not simulated")
                    files[item["path"]] = value
            token = source.get("serviceAccountToken")
            if token is not None:
                request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
                    audiences=[token["audience"]] if token.get("audience") else [],
                    expiration_seconds=token.get("expirationSeconds", 3607)))
                answer = self.api.create_namespaced_service_account_token(
                    pod["spec"].get("serviceAccountName", "default"), namespace, request)
                files[token["path"]] = answer.status.token
        _write_atomically(folder, files)
        return folder

    def sync_file_volumes(self, pod: dict[str, Any], pod_dir: Path) -> None:
        """A running pod's Secret and ConfigMap volumes follow their objects, as the kubelet's do (tokens are
        not re-requested); an object gone or unreadable leaves the files as they were."""
        for volume in pod["spec"].get("volumes") or []:
            sources = (volume["projected"].get("sources") or []) if "projected" in volume else [volume]
            folder = pod_dir / "volumes" / volume["name"]
            refreshable = all(("secret" in s or "configMap" in s) for s in sources) and sources
            if not refreshable or not folder.is_dir():
                continue
            try:
                self._file_volume(pod, volume, folder)
            except (SpecError, ApiException) as err:
                log.debug("pod %s: volume %s not refreshed: %s", pod["metadata"]["name"], volume["name"], err)

    def _claim_folder(self, namespace: str, claim: str) -> Path:
        try:
            pvc = self.api.read_namespaced_persistent_volume_claim(claim, namespace)
        except ApiException as e:
            raise SpecError(f"persistentVolumeClaim {claim!r} not found") from e
        if not pvc.spec.volume_name:
            raise SpecError(f"persistentVolumeClaim {claim!r} is not bound yet")
        pv = self.api.read_persistent_volume(pvc.spec.volume_name)
        if pv.spec.host_path is None:
            raise SpecError(f"volume {pv.metadata.name!r} has no hostPath folder to mount")
        folder = Path(pv.spec.host_path.path)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def create_debug_objects(self, pod: dict[str, Any], ip: str, logs: dict[str, tuple[Path, Path]]) -> None:
        """KWOK `Logs` and `PortForward` objects for the pod (owned by it, so they go with it)."""
        meta = pod["metadata"]
        owner = {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}
        metadata = {"name": meta["name"], "namespace": meta["namespace"], "ownerReferences": [owner]}
        ports = sorted({int(p["containerPort"]) for c in pod["spec"].get("containers") or []
                        for p in c.get("ports") or []})
        objects = {
            "logs": {"kind": "Logs", "spec": {"logs": [
                {"containers": [name], "logsFile": str(cur), "previousLogsFile": str(prev), "follow": True}
                for name, (cur, prev) in logs.items()]}},
            "portforwards": {"kind": "PortForward", "spec": {"forwards": [
                {"ports": [p], "target": {"port": p, "address": ip}} for p in ports]}},
        }
        for plural, content in objects.items():
            body = {"apiVersion": "/".join(KWOK_API), "metadata": metadata, **content}
            try:
                self.custom.create_namespaced_custom_object(*KWOK_API, meta["namespace"], plural, body)
            except ApiException as e:
                if e.status == 409:  # left by an earlier pod of the same name (a StatefulSet's): replace it
                    self._replace_debug_object(plural, body)
                else:
                    log.warning("%s for %s/%s: %s", body["kind"], meta["namespace"], meta["name"], e.reason)
            except Exception as e:  # best effort, as the logs are: the pod runs without them
                log.warning("%s for %s/%s: %s", body["kind"], meta["namespace"], meta["name"], e)

    def _replace_debug_object(self, plural: str, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        with contextlib.suppress(ApiException):
            old = self.custom.get_namespaced_custom_object(*KWOK_API, meta["namespace"], plural, meta["name"])
            owners = [o.get("uid") for o in old["metadata"].get("ownerReferences") or []]
            if owners == [meta["ownerReferences"][0]["uid"]]:
                return  # this pod's own, already
            body = {**body, "metadata": {**meta, "resourceVersion": old["metadata"]["resourceVersion"]}}
            self.custom.replace_namespaced_custom_object(*KWOK_API, meta["namespace"], plural, meta["name"],
                                                         body)

    def release(self, worker: PodWorker, delete: bool) -> None:
        """The pod's processes are gone. When it was being deleted, let the API server remove it, as a
        kubelet does once a pod is stopped (KWOK does not: it leaves the runner's pods alone)."""
        with self._lock:
            self.workers.pop(worker.uid, None)
            self.finished.add(worker.uid)
        if delete and not self.stopping.is_set():
            self._remove(worker.namespace, worker.pod_name, worker.uid)

    def _remove(self, namespace: str, name: str, uid: str) -> None:
        with contextlib.suppress(Exception):
            self.api.delete_namespaced_pod(
                name, namespace, grace_period_seconds=0,
                body=client.V1DeleteOptions(grace_period_seconds=0,
                                            preconditions=client.V1Preconditions(uid=uid)))

    # -- the watch --------------------------------------------------------------------------------------

    @staticmethod
    def runs(pod: dict[str, Any]) -> bool:
        spec = pod.get("spec") or {}
        if not spec.get("nodeName"):
            return False
        containers = [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]
        return any(images.owned(str(c.get("image", ""))) for c in containers)

    def _on_event(self, kind: str, pod: dict[str, Any]) -> None:
        if self.stopping.is_set():
            return
        meta = pod["metadata"]
        uid = meta["uid"]
        with self._lock:
            worker = self.workers.get(uid)
            finished = uid in self.finished
        if kind == "DELETED":
            if worker is not None:
                worker.gone()
            return
        if not self.runs(pod):
            return
        if worker is not None:
            worker.update(pod)
            return
        if meta.get("deletionTimestamp"):
            # Nothing of it runs (any more): release it at once. Stale events of a pod already released
            # land here too, and must not start it again.
            self._remove(meta["namespace"], meta["name"], uid)
            return
        if finished or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return  # it has run here to its end (a Job's pod), or before this runner started
        worker = PodWorker(self, pod)
        with self._lock:
            self.workers[uid] = worker
        worker.start()

    def flush_events(self) -> None:
        """Posts the Events the pods' threads queued (from the main thread only)."""
        while self.events:
            pod, kind, reason, message = self.events.pop(0)
            meta = pod["metadata"]
            body = client.CoreV1Event(
                metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
                involved_object=client.V1ObjectReference(kind="Pod", name=meta["name"],
                                                         namespace=meta["namespace"], uid=meta["uid"]),
                type=kind, reason=reason, message=message, source=client.V1EventSource(component="kubelet"),
                first_timestamp=datetime.datetime.now(datetime.UTC), count=1)
            with contextlib.suppress(Exception):  # an Event is best effort, as a kubelet's
                self.api.create_namespaced_event(meta["namespace"], body)

    def watch_pods(self, ready_file: Path) -> None:
        resource_version = ""
        while not self.stopping.is_set():
            try:
                if not resource_version:
                    listing = self.api.list_pod_for_all_namespaces(_preload_content=False)
                    import json

                    body = json.loads(listing.data)
                    listed = {pod["metadata"]["uid"] for pod in body["items"]}
                    with self._lock:
                        vanished = [w for uid, w in self.workers.items() if uid not in listed]
                    for w in vanished:  # deleted while the watch was broken
                        w.gone()
                    for pod in body["items"]:
                        self._on_event("ADDED", pod)
                    resource_version = body["metadata"]["resourceVersion"]
                    ready_file.touch()
                w = watch.Watch()
                for event in w.stream(self.api.list_pod_for_all_namespaces, resource_version=resource_version,
                                      timeout_seconds=60, allow_watch_bookmarks=True):
                    obj = event["raw_object"]
                    resource_version = obj["metadata"].get("resourceVersion", resource_version)
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self._on_event(event["type"], obj)
                    if self.stopping.is_set():
                        break
            except ApiException as e:
                if e.status == 410:  # too old: list again
                    resource_version = ""
                    continue
                log.warning("watching pods: %s", e)
                time.sleep(1)
            except Exception as e:
                if self.stopping.is_set():
                    break
                log.warning("watching pods: %s: %s", type(e).__name__, e)
                time.sleep(1)

    def stop_all(self) -> None:
        """The cluster is going down: no drain, every pod's processes killed now."""
        self.stopping.set()
        with self._lock:
            workers = list(self.workers.values())
        for w in workers:
            w.gone()
        for w in workers:
            w.join(timeout=30)


def kill_leftovers(state: Path) -> None:
    """SIGKILL to every process group the runner started and did not see exit (after a crash of it)."""
    folder = state / "pgids"
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(entry.name), signal.SIGKILL)
        entry.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grok-devcluster-podrunner", description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--state", type=Path, required=True, help="folder for pod logs and runtime state")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.state.mkdir(parents=True, exist_ok=True)
    runner = Runner(args.kubeconfig, args.state)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s: stopping every pod", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    watcher = threading.Thread(target=runner.watch_pods, args=(args.state / "ready",), daemon=True)
    watcher.start()
    while not stop.wait(0.5):
        runner.flush_events()
    runner.stop_all()
    kill_leftovers(args.state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
