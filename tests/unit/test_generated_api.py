"""agent/api is exactly what scripts/gen_proto.py makes from proto/ (not stale)."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys

from agent.api.cri.runtime.v1 import api_pb2 as cri
from agent.api.kubelet.deviceplugin.v1beta1 import api_pb2 as deviceplugin
from agent.api.kubelet.podresources.v1 import api_pb2 as podresources

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tree(path):
    result = {}
    for dirpath, dirnames, files in os.walk(path):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in files:
            full = os.path.join(dirpath, name)
            result[os.path.relpath(full, path)] = full
    return result


def test_generated_modules_match_the_protos(tmp_path):
    out = tmp_path / "api"
    subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "gen_proto.py"), str(out)], check=True
    )
    fresh, committed = tree(out), tree(os.path.join(ROOT, "agent", "api"))
    assert sorted(fresh) == sorted(committed), "run scripts/gen_proto.py"
    stale = [rel for rel in fresh if not filecmp.cmp(fresh[rel], committed[rel], shallow=False)]
    assert stale == [], f"stale generated files (run scripts/gen_proto.py): {stale}"


def test_cri_has_the_41_rpcs_of_kubernetes_1_36():
    services = cri.DESCRIPTOR.services_by_name
    assert set(services) == {"RuntimeService", "ImageService"}
    assert len(services["RuntimeService"].methods) == 35
    assert len(services["ImageService"].methods) == 6
    assert cri.DESCRIPTOR.package == "runtime.v1"


def test_kubelet_protos_have_distinct_files_and_upstream_packages():
    names = {cri.DESCRIPTOR.name, deviceplugin.DESCRIPTOR.name, podresources.DESCRIPTOR.name}
    assert len(names) == 3
    assert deviceplugin.DESCRIPTOR.package == "v1beta1"
    assert podresources.DESCRIPTOR.package == "v1"
    assert set(deviceplugin.DESCRIPTOR.services_by_name) == {"Registration", "DevicePlugin"}
    assert set(podresources.DESCRIPTOR.services_by_name["PodResourcesLister"].methods_by_name) == {
        "List",
        "GetAllocatableResources",
        "Get",
    }
