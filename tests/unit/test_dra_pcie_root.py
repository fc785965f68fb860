"""The standard ``resource.kubernetes.io/pcieRoot`` attribute, read from a fake sysfs laid
out as Linux does (``bus/pci/devices/<id>`` → ``../../../devices/pci<root>/…/<id>``)."""

from __future__ import annotations

import os

from agent.gpu.dra.devices import dra_devices, pcie_root, slice_device
from tests.unit.test_dra_devices import A100, DRIVER, H100, INVENTORY, resource_slice, valid

ROOT = "pcieRoot"
KEY = f"resource.kubernetes.io/{ROOT}"


def fake_sysfs(base: str, root: str, *chain: str) -> str:
    """A sysfs whose last bus id in ``chain`` sits below ``root`` behind the others."""
    device = os.path.join(base, "devices", root, *chain)
    os.makedirs(device)
    devices = os.path.join(base, "bus", "pci", "devices")
    os.makedirs(devices, exist_ok=True)
    os.symlink(
        os.path.join("..", "..", "..", "devices", root, *chain), os.path.join(devices, chain[-1])
    )
    return base


def test_the_root_complex_is_read_through_the_bus_link(tmp_path):
    sysfs = fake_sysfs(str(tmp_path), "pci0000:17", "0000:17:00.0", "0000:18:00.0")
    assert pcie_root("0000:18:00.0", sysfs) == "pci0000:17"
    assert pcie_root("0000:2a:00.0", sysfs) == ""  # no such device
    odd = fake_sysfs(str(tmp_path / "odd"), "platform", "0000:19:00.0")
    assert pcie_root("0000:19:00.0", odd) == ""  # not below a PCI root


def test_gpus_and_their_mig_devices_carry_their_pcie_root(tmp_path):
    sysfs = fake_sysfs(str(tmp_path), "pci0000:17", "0000:17:01.0", "0000:18:00.0")
    fake_sysfs(str(tmp_path), "pci0000:29", "0000:2a:00.0")
    devices = dra_devices(INVENTORY, {H100.uuid, A100.uuid}, 2, sysfs=sysfs)
    roots = {d.name: slice_device(d, DRIVER, None)["attributes"][KEY] for d in devices}
    assert roots == {
        "gpu-0-replica-0": {"string": "pci0000:17"},
        "gpu-0-replica-1": {"string": "pci0000:17"},
        "gpu-1-mig-7-0-replica-0": {"string": "pci0000:29"},
        "gpu-1-mig-7-0-replica-1": {"string": "pci0000:29"},
    }
    valid(resource_slice([slice_device(d, DRIVER, None) for d in devices]))


def test_no_root_where_sysfs_does_not_say_nor_for_simulated_gpus_by_default(tmp_path):
    [unresolved] = dra_devices(INVENTORY, {H100.uuid}, 1, sysfs=str(tmp_path))
    assert KEY not in slice_device(unresolved, DRIVER, None)["attributes"]
    [simulated] = dra_devices(INVENTORY, {H100.uuid}, 1)  # would read the host's /sys
    assert simulated.pcie_root == ""
