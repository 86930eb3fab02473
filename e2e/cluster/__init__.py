"""A real local Kubernetes control plane for e2e tests and demos.

etcd + kube-apiserver + kube-controller-manager + kube-scheduler built from the pinned release,
kwok for fake nodes (Pods get scheduled and report Running/Ready without a kubelet), the Gateway API
CRDs from their Go module, and Prometheus scraping the simulated agents through file_sd.
"""

from e2e.cluster.lifecycle import ClusterStartError, is_healthy, load_state, start_cluster, stop_cluster
from e2e.cluster.state import ClusterState

__all__ = ["ClusterStartError", "ClusterState", "is_healthy", "load_state", "start_cluster", "stop_cluster"]
