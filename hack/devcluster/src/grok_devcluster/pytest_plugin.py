"""pytest fixtures: one simulated GPU cluster per test session and a fresh namespace per test.

The session cluster has H100 and H200 nodes (so tests can check placement by GPU product) and one
node without GPUs. It is stopped at the end of the session, also when the session is interrupted.
"""

from __future__ import annotations

import atexit
import re
import secrets
import signal
from collections.abc import Iterator

import pytest

from grok_devcluster.cluster import DevCluster, NodePool

SESSION_POOLS = (
    NodePool(count=3, gpus_per_node=8, gpu_product="NVIDIA-H100-80GB-HBM3", name_prefix="h100"),
    NodePool(count=2, gpus_per_node=8, gpu_product="NVIDIA-H200", name_prefix="h200"),
)


@pytest.fixture(scope="session")
def devcluster() -> Iterator[DevCluster]:
    cluster = DevCluster()
    atexit.register(cluster.down)
    # SIGTERM (a CI timeout, `kill`) would otherwise end the process without running finalizers:
    # treat it as Ctrl-C, which pytest answers by tearing fixtures down.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    cluster.up(SESSION_POOLS, cpu_nodes=1)
    try:
        yield cluster
    finally:
        cluster.down()
        signal.signal(signal.SIGTERM, previous)
        atexit.unregister(cluster.down)


@pytest.fixture
def k8s_namespace(devcluster: DevCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of its own for one test, deleted afterwards (without waiting for it to go)."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base}-{secrets.token_hex(2)}"
    devcluster.kubectl("create", "namespace", name)
    # ServiceAccount admission refuses pods until the namespace's default ServiceAccount exists.
    devcluster.kubectl("wait", "--for=create", "serviceaccount/default", "-n", name, "--timeout=30s")
    yield name
    # Wait for the namespace to go: its pods hold simulated GPUs that the next test may need.
    devcluster.kubectl("delete", "namespace", name, "--timeout=90s", check=False, timeout=120)
