"""The DRA driver's prepare on the real driver: a claim → its CDI spec → a container that
lists exactly the claimed GPU with ``nvidia-smi -L``.

The claim is what the scheduler would leave (one device of this node's pool, named as
the driver publishes it from the real inventory); it reaches ``ClaimPreparer`` through
a stand-in of the driver's own API seam (``read_claim``), since no API server runs on
the GPU machine. Everything else is real: the node's CDI spec from the real driver
root, the per-claim spec written from it, the checkpoint in SQLite, the resolution of
the CDI id the kubelet would pass, and runc running the mounted host ``nvidia-smi``.
Skipped with the reason where there is no GPU, or where runc cannot create a container.
"""

from __future__ import annotations

import json
import os
from typing import Any, cast

import pytest

from agent.db import MetadataDB
from agent.gpu.backend import GpuBackend
from agent.gpu.dra.devices import dra_devices
from agent.gpu.dra.kube import ResourceApi
from agent.gpu.dra.prepare import ClaimPreparer, ClaimRef
from agent.gpu.inventory import Inventory
from agent.gpu.service import GpuService
from tests.gpu.test_cdi_real import (  # noqa: F401  (runc and service are fixtures)
    _config,
    _probe,
    _rootfs,
    find_busybox,
    runc,
    service,
)
from tests.support.nvidia_host import driver_root

pytestmark = pytest.mark.gpu

DRIVER = "gpu.model-agent.io"
POOL = "gpu-node"
CLAIM_UID = "5d1c2b9e-0000-4000-8000-00000000d4a1"


class ClaimSource:
    """The driver's ``ResourceApi`` seam, answering the one allocated claim."""

    def __init__(self, claim: dict[str, Any]) -> None:
        self.claim = claim
        self.reads = 0

    def read_claim(self, namespace: str, name: str) -> dict[str, Any]:
        self.reads += 1
        meta = self.claim["metadata"]
        assert (namespace, name) == (meta["namespace"], meta["name"])
        return self.claim


def test_a_prepared_claim_gives_a_container_exactly_its_gpu(
    service: GpuService,  # noqa: F811
    runc,  # noqa: F811
    tmp_path,
    nvml: GpuBackend,
):
    busybox = find_busybox()
    _probe(runc, tmp_path, busybox)
    inventory = Inventory.read(nvml)
    gpu = inventory.usable()[-1]  # the last GPU: not the one a default would pick
    [device, *_] = dra_devices(inventory, {gpu.uuid}, 1)
    claim = {
        "metadata": {"namespace": "default", "name": "gpu-claim", "uid": CLAIM_UID},
        "status": {
            "allocation": {
                "devices": {
                    "results": [
                        {"request": "gpu", "driver": DRIVER, "pool": POOL, "device": device.name}
                    ]
                }
            }
        },
    }
    source = ClaimSource(claim)
    spec_dir = str(tmp_path / "cdi")  # the service fixture's node spec dir
    db = MetadataDB(str(tmp_path / "metadata.db"))
    try:
        preparer = ClaimPreparer(
            db=db,
            api=lambda: cast(ResourceApi, source),
            driver=DRIVER,
            pool=POOL,
            spec_dir=spec_dir,
            devices=lambda: {device.name: device},
            node_spec=service.node_spec,
        )
        ref = ClaimRef("default", "gpu-claim", CLAIM_UID)
        [prepared] = preparer.prepare(ref)
        cdi_id = f"k8s.gpu.model-agent.io/claim={CLAIM_UID}-{device.name}"
        assert prepared.cdi_ids == (cdi_id,) and prepared.device == device.name
        spec_file = os.path.join(spec_dir, f"k8s.gpu.model-agent.io-claim_{CLAIM_UID}.json")
        with open(spec_file) as f:
            assert [d["name"] for d in json.load(f)["devices"]] == [f"{CLAIM_UID}-{device.name}"]
        assert preparer.prepare(ref) == [prepared] and source.reads == 1  # idempotent

        edits, assignment = service.resolve(cdi_devices=[cdi_id])
        assert [g.uuid for g in assignment.grants] == [device.uuid]
        smi = next(m for m in edits.mounts if os.path.basename(m.container_path) == "nvidia-smi")
        bundle = tmp_path / "bundle"
        bundle.mkdir()
        skip_under = driver_root() if driver_root() != "/" else "/nonexistent"
        _rootfs(str(bundle), smi.host_path, busybox, skip_under)
        config = _config([smi.container_path, "-L"], "")
        service.apply(config, edits)
        (bundle / "config.json").write_text(json.dumps(config))
        done = runc.run(str(bundle))
        assert done.returncode == 0, done.stderr + done.stdout
        listed = [line for line in done.stdout.splitlines() if line.startswith("GPU ")]
        assert len(listed) == 1 and gpu.uuid in listed[0], done.stdout

        preparer.unprepare(ref)
        assert not os.path.exists(spec_file) and db.dra_devices() == []
    finally:
        db.close()
