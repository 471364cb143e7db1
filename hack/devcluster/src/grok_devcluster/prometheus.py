"""A real Prometheus server (built from the Go module proxy with the other tools: distributions' packages
leave Kubernetes service discovery out) for the simulated cluster's tests and demo.

Given the cluster's kubeconfig it discovers pods as it does on a cluster (`kubernetes_sd_configs`, role pod),
keeping those with the `prometheus.io/scrape` annotation, at their pod address and annotated port; it also
scrapes the targets listed in a file, which can change while it runs."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import yaml

from grok_devcluster.local import free_port, wait
from grok_devcluster.tools import tools_dir


def pod_discovery_job(kubeconfig: Path, scrape_interval: str) -> dict:
    """The usual annotation-driven pod scrape job, with the labels the operator's autoscaler queries by."""
    return {
        "job_name": "kubernetes-pods",
        "scrape_timeout": scrape_interval,
        "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": str(kubeconfig)}],
        "tls_config": {"insecure_skip_verify": True},
        "relabel_configs": [
            {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"], "action": "keep",
             "regex": "true"},
            {"source_labels": ["__meta_kubernetes_pod_phase"], "action": "keep", "regex": "Running"},
            {"source_labels": ["__meta_kubernetes_pod_ip",
                               "__meta_kubernetes_pod_annotation_prometheus_io_port"],
             "regex": r"(.+);(\d+)", "replacement": "$1:$2", "target_label": "__address__"},
            {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"], "regex": "(.+)",
             "target_label": "__metrics_path__"},
            # A router serving TLS (spec.router.tls) says https; its certificate is not checked here.
            {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scheme"], "regex": "(https?)",
             "target_label": "__scheme__"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_label_serving_grok_dev_deployment"],
             "target_label": "serving_grok_dev_deployment"},
        ],
    }


class PrometheusServer:
    def __init__(
        self,
        workdir: Path,
        scrape_interval: str = "1s",
        kubeconfig: Path | None = None,
        rule_files: Sequence[Path] = (),
    ) -> None:
        """`rule_files`: rules files it evaluates every scrape interval (alerts in /api/v1/alerts)."""
        self.binary, self.workdir = str(tools_dir() / "prometheus"), workdir
        self.targets_file = workdir / "targets.json"
        self.targets_file.write_text("[]")
        config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            **({"rule_files": [str(p) for p in rule_files]} if rule_files else {}),
            "scrape_configs": [
                {
                    "job_name": "grok-server",
                    "scrape_timeout": scrape_interval,
                    "file_sd_configs": [{"files": [str(self.targets_file)], "refresh_interval": "1s"}],
                },
                *([pod_discovery_job(kubeconfig, scrape_interval)] if kubeconfig is not None else []),
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        log = (self.workdir / "prometheus.log").open("ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a process group of its own: DevCluster.adopt can stop it
        )
        def ready() -> bool:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2):  # an error status raises
                return True

        try:
            wait(ready, timeout, "Prometheus to be ready", transient=(OSError,))
        except TimeoutError as e:
            self.stop()
            log = self.workdir / "prometheus.log"
            raise RuntimeError(f"Prometheus did not become ready; see {log}") from e

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)

    def scrape(self, *targets: tuple[str, dict[str, str]]) -> None:
        """Replaces the scraped targets: (host:port, labels)."""
        groups = [{"targets": [address], "labels": labels} for address, labels in targets]
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.replace(self.targets_file)  # atomically: Prometheus watches the file

    def targets(self) -> list[dict]:
        """The active targets, as Prometheus' API lists them (labels, health, scrape URL)."""
        with urllib.request.urlopen(f"{self.url}/api/v1/targets?state=active", timeout=5) as response:
            return list(json.load(response)["data"]["activeTargets"])

    def query(self, promql: str) -> list[dict]:
        address = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(address, timeout=5) as response:
            return json.load(response)["data"]["result"]
