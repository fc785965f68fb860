"""A simulated GPU node for tests: a simulation file, a fake driver, device nodes, CDI dirs.

``make_gpu_node(base)`` lays out, under ``base``:

* ``sim.toml`` — two GPUs (``GPU-1111…``, ``GPU-2222…``), GPU 1 optionally in MIG
  mode with one MIG device whose capability minors are 12/13;
* ``driver/`` — a fake NVIDIA driver (``fake_driver.install_driver``) with its
  own ``etc/ld.so.cache`` built by the real ldconfig;
* ``devroot/dev/nvidia*`` — real character devices with NVIDIA's majors;
* ``etc-cdi/`` and ``run-cdi/`` — the two CDI spec dirs, lowest priority first.

``config_keys`` are the dotted ``[gpu]`` keys pointing an agent at all of it.
Independent of ``agent/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from tests.support.fake_driver import FakeDriver, install_driver, make_device_nodes

__all__ = ["GPU0", "GPU1", "MIG0", "GpuNode", "make_gpu_node", "simulation_toml"]

GPU0 = "GPU-11111111-1111-1111-1111-111111111111"
GPU1 = "GPU-22222222-2222-2222-2222-222222222222"
MIG0 = "MIG-33333333-3333-3333-3333-333333333333"


def simulation_toml(*, mig: bool = False, processes: str = "", events: str = "") -> str:
    gpu1_mig = (
        f"""
mig_mode = "enabled"
[[gpus.mig]]
uuid = "{MIG0}"
gpu_instance_id = 7
compute_instance_id = 0
profile = "1g.18gb"
memory_total_mib = 16384
gi_cap_minor = 12
ci_cap_minor = 13
[gpus.mig.samples]
memory_used_mib = [100, 200]
"""
        if mig
        else ""
    )
    return f"""
driver_version = "550.54.15"
cuda_driver_version = "12.4"
nvml_version = "12.550.54.15"

[[gpus]]
uuid = "{GPU0}"
name = "NVIDIA H100 80GB HBM3"
brand = "Nvidia"
memory_total_mib = 81559
pci_bus_id = "00000000:18:00.0"
numa_node = 0
gpm_supported = true
[gpus.samples]
gpu_util = [10, 50, 90]
mem_copy_util = 5
memory_used_mib = [1024, 2048]
power_watts = 300
gpu_temp_c = 41
[gpus.gpm]
sm_active = [20, 40]
tensor_active = 10

[[gpus]]
uuid = "{GPU1}"
name = "NVIDIA H100 80GB HBM3"
brand = "Nvidia"
memory_total_mib = 81559
pci_bus_id = "00000000:2A:00.0"
numa_node = 1
{gpu1_mig}
{processes}
{events}
"""


@dataclass
class GpuNode:
    base: str
    sim_file: str
    driver: FakeDriver
    dev_root: str
    etc_cdi: str
    run_cdi: str
    device_nodes: dict[str, tuple[int, int]] = field(default_factory=dict)

    def config_keys(self, **extra: Any) -> dict[str, Any]:
        keys: dict[str, Any] = {
            "gpu.backend": "simulated",
            "gpu.simulated_file": self.sim_file,
            "gpu.cdi_spec_dirs": [self.etc_cdi, self.run_cdi],
            "gpu.node_spec_dir": self.run_cdi,
            "gpu.driver_root": self.driver.root,
            "gpu.dev_root": self.dev_root,
        }
        keys.update({f"gpu.{k}": v for k, v in extra.items()})
        return keys

    def write_simulation(self, text: str) -> None:
        """Replace the simulation file atomically (the backend re-reads it)."""
        tmp = self.sim_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.sim_file)


def make_gpu_node(base: str, *, mig: bool = False) -> GpuNode:
    os.makedirs(base, exist_ok=True)
    sim = os.path.join(base, "sim.toml")
    with open(sim, "w") as f:
        f.write(simulation_toml(mig=mig))
    driver = install_driver(os.path.join(base, "driver"))
    dev_root = os.path.join(base, "devroot")
    nodes = make_device_nodes(dev_root, [0, 1], caps=[12, 13] if mig else [])
    etc_cdi = os.path.join(base, "etc-cdi")
    run_cdi = os.path.join(base, "run-cdi")
    os.makedirs(etc_cdi)
    os.makedirs(run_cdi)
    return GpuNode(base, sim, driver, dev_root, etc_cdi, run_cdi, nodes)
