"""agent/api is exactly what scripts/gen_proto.py makes from proto/ (not stale)."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys

from agent.api.cri.runtime.v1 import api_pb2 as cri
from agent.api.kubelet.deviceplugin.v1beta1 import api_pb2 as deviceplugin
from agent.api.kubelet.dra.v1 import api_pb2 as dra_v1
from agent.api.kubelet.dra.v1beta1 import api_pb2 as dra_v1beta1
from agent.api.kubelet.dra_health.v1alpha1 import api_pb2 as health_v1alpha1
from agent.api.kubelet.dra_health.v1beta1 import api_pb2 as health_v1beta1
from agent.api.kubelet.pluginregistration.v1 import api_pb2 as registration
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
    modules = [
        cri,
        deviceplugin,
        podresources,
        dra_v1,
        dra_v1beta1,
        health_v1alpha1,
        health_v1beta1,
        registration,
    ]
    names = {m.DESCRIPTOR.name for m in modules}
    assert len(names) == len(modules)
    assert deviceplugin.DESCRIPTOR.package == "v1beta1"
    assert podresources.DESCRIPTOR.package == "v1"
    assert set(deviceplugin.DESCRIPTOR.services_by_name) == {"Registration", "DevicePlugin"}
    assert set(podresources.DESCRIPTOR.services_by_name["PodResourcesLister"].methods_by_name) == {
        "List",
        "GetAllocatableResources",
        "Get",
    }


def test_dra_registration_and_health_protos_have_upstream_packages_and_services():
    """The full check of fields and method paths is in test_kubelet_wire.py."""
    assert dra_v1.DESCRIPTOR.package == "k8s.io.kubelet.pkg.apis.dra.v1"
    assert dra_v1beta1.DESCRIPTOR.package == "k8s.io.kubelet.pkg.apis.dra.v1beta1"
    assert registration.DESCRIPTOR.package == "pluginregistration"
    assert health_v1alpha1.DESCRIPTOR.package == "v1alpha1"
    assert health_v1beta1.DESCRIPTOR.package == "v1beta1"
    for module in (dra_v1, dra_v1beta1):
        methods = module.DESCRIPTOR.services_by_name["DRAPlugin"].methods_by_name
        assert set(methods) == {"NodePrepareResources", "NodeUnprepareResources"}
    methods = registration.DESCRIPTOR.services_by_name["Registration"].methods_by_name
    assert set(methods) == {"GetInfo", "NotifyRegistrationStatus"}
    for module in (health_v1alpha1, health_v1beta1):
        methods = module.DESCRIPTOR.services_by_name["DRAResourceHealth"].methods_by_name
        assert set(methods) == {"NodeWatchResources"}
        assert methods["NodeWatchResources"].server_streaming


def test_health_v1beta1_shares_the_device_plugin_package_without_clashes():
    """Both upstream files say ``package v1beta1``; their symbols must not collide."""
    assert deviceplugin.DESCRIPTOR.package == health_v1beta1.DESCRIPTOR.package
    plugin = set(deviceplugin.DESCRIPTOR.message_types_by_name)
    plugin |= set(deviceplugin.DESCRIPTOR.services_by_name)
    health = set(health_v1beta1.DESCRIPTOR.message_types_by_name)
    health |= set(health_v1beta1.DESCRIPTOR.services_by_name)
    health |= set(health_v1beta1.DESCRIPTOR.enum_types_by_name)
    for enum in health_v1beta1.DESCRIPTOR.enum_types_by_name.values():
        health |= {value.name for value in enum.values}  # enum values are package-scoped
    assert plugin.isdisjoint(health)
