"""The device plugin (kubelet API ``v1beta1``) inside the agent.

* ``resources`` — extended resources and device ids (MIG strategies, replicas);
* ``preferred`` — ``GetPreferredAllocation`` (NUMA/NVLink packing, spread for replicas);
* ``tokens`` — the env fallback's allocation tokens;
* ``plugin.DevicePluginServer`` — one resource's server and its registration;
* ``manager.DevicePlugins`` — every resource of the node.

Nothing here imports ``pods`` or ``cri``.
"""

from agent.gpu.deviceplugin.manager import DevicePlugins

__all__ = ["DevicePlugins"]
