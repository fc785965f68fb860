"""The DRA driver (``resource.k8s.io/v1``) inside the agent.

* ``devices`` — the node's pool: device names, NVIDIA's attribute names, taints;
* ``slices`` — ResourceSlice publication (``kube``: the ``kubernetes`` client calls);
* ``prepare`` — ResourceClaims → per-claim CDI specs, checkpointed in the database;
* ``grpc_services`` — Registration, DRAPlugin v1/v1beta1, DRAResourceHealth;
* ``driver.DraDriver`` — all of it, started and stopped by ``gpu.kubelet_plugins``.

Nothing here imports ``pods`` or ``cri``.
"""

from agent.gpu.dra.driver import DraDriver

__all__ = ["DraDriver"]
