"""grok-devcluster: a local Kubernetes control plane with simulated GPU nodes.

Real etcd, kube-apiserver, kube-controller-manager and kube-scheduler run as local processes (started
by kwokctl from binaries built from the Go module proxy); KWOK plays the kubelets of GPU nodes, so the
scheduler places GPU pods exactly as on a real cluster and those pods turn Running and Ready.
"""

from grok_common.pods import is_ready
from grok_devcluster.cluster import DevCluster, NodePool

__all__ = ["DevCluster", "NodePool", "is_ready"]
