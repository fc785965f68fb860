"""The Helm chart, rendered by Helm's own engine (helm-sdkpy; see tests/support/helm.py) for the
documented values sets, every manifest validated against the Kubernetes 1.36 schemas
(kubernetes-validate) or, for the CRDs it lacks, the published schemas in tests/schemas/, the
alert rules checked by promtool, plus Helm's lint and behaviour checks per values set."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support.helm import HelmError, Rendered, lint, render

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("helm_sdkpy") is None,
    reason="helm-sdkpy is not installed (scripts/setup installs it with --ignore-requires-python)",
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(REPO, "charts", "model-agent")
SCHEMAS = os.path.join(REPO, "tests", "schemas")
KUBERNETES = "1.36.0"
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule_v1.json",
    ("monitoring.coreos.com/v1alpha1", "ScrapeConfig"): "scrapeconfig_v1alpha1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject_v1alpha1.json",
}

#: The values sets the README documents (charts/model-agent/README.md).
VALUES_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "gpu-nodes-dra": {
        "gpu": {"mode": "dra", "selectNodes": True},
        "dra": {
            "extraDeviceClasses": [
                {
                    "name": "h200.gpu.model-agent.io",
                    "selectors": [
                        'device.attributes["gpu.model-agent.io"].productName == "NVIDIA H200"'
                    ],
                }
            ]
        },
        "metricsAuth": {"type": "bearer", "token": "s3cret"},
        "installer": {"extraArgs": ["--cgroup-driver=systemd"]},
        "agent": {
            "metricsScheme": "https",
            "metricsTlsConfig": {
                "ca": {"secret": {"name": "agent-ca", "key": "ca.crt"}},
                "serverName": "model-agent",
            },
        },
    },
    "device-plugin": {"gpu": {"mode": "devicePlugin", "selectNodes": True}},
    "autoscaling": {
        "autoscaling": {
            "keda": {
                "enabled": True,
                "scaledObjects": [
                    {
                        "name": "llm",
                        "namespace": "serving",
                        "target": {"kind": "Deployment", "name": "llm"},
                        "minReplicas": 1,
                        "maxReplicas": 8,
                        "signals": [
                            {"metric": "queueLength", "threshold": "10"},
                            {"metric": "gpuUtilization", "threshold": "0.8"},
                        ],
                    }
                ],
            },
            "prometheusAdapter": {"enabled": True},
        },
        "metricNames": {"queueLength": "vllm:num_requests_waiting"},
    },
    "monitoring-off": {
        "installer": {"enabled": False},
        "monitoring": {
            "serviceMonitor": {"enabled": False},
            "prometheusRule": {"enabled": False},
            "grafanaDashboard": {"enabled": False},
        },
    },
    "scrapeconfig-basic-auth": {
        "installer": {"enabled": False},
        "monitoring": {
            "scrapeConfig": {"enabled": True, "nodeLabelSelector": "nvidia.com/gpu.present=true"}
        },
        "metricsAuth": {"type": "basic", "existingSecret": "agent-scrape"},
        "agent": {"metricsScheme": "https", "metricsTlsConfig": {"insecureSkipVerify": True}},
        "runtimeClasses": {"enabled": False},
        "gpu": {"mode": "none"},
    },
}

_rendered: dict[str, Rendered] = {}


def rendered(name: str) -> Rendered:
    if name not in _rendered:
        _rendered[name] = render(CHART, VALUES_SETS[name])
    return _rendered[name]


def validate(manifest: dict[str, Any]) -> None:
    key = (manifest["apiVersion"], manifest["kind"])
    if key in CRD_SCHEMAS:
        with open(os.path.join(SCHEMAS, CRD_SCHEMAS[key])) as f:
            schema = json.load(f)
        # Not jsonschema.validate: that first checks every pattern compiles as a Python regex,
        # and the published PrometheusRule has a Go one ("^(?i)..."), for a field never set here.
        jsonschema.Draft7Validator(schema).validate(manifest)
    else:
        import kubernetes_validate

        kubernetes_validate.validate(manifest, KUBERNETES, strict=True)


@pytest.mark.parametrize("name", sorted(VALUES_SETS))
def test_values_set_lints_renders_and_validates(name):
    lint(CHART, VALUES_SETS[name])
    result = rendered(name)
    assert result.manifests, "nothing rendered"
    for manifest in result.manifests:
        validate(manifest)


def test_validation_can_fail():
    """The schema checks above are live: a wrong field is caught in both kinds of schema."""
    import kubernetes_validate

    daemonset = rendered("defaults").one("DaemonSet")
    broken = json.loads(json.dumps(daemonset))
    broken["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)
    monitor = json.loads(json.dumps(rendered("defaults").one("ServiceMonitor")))
    monitor["spec"]["endpoints"][0]["scheme"] = "gopher"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)


def test_bad_values_are_refused_by_the_schema_and_the_templates():
    with pytest.raises(HelmError, match=r"values\.yaml"):
        lint(CHART, {"installer": {"enabeld": True}})  # a typo: additionalProperties false
    with pytest.raises(HelmError, match=r"values\.yaml"):
        lint(CHART, {"gpu": {"mode": "mig"}})
    with pytest.raises(HelmError, match=r"needs metricsAuth\.token"):
        render(CHART, {"metricsAuth": {"type": "bearer"}})


def test_defaults_installer_service_and_service_monitor_fit_together():
    r = rendered("defaults")
    ds = r.one("DaemonSet")
    pod = ds["spec"]["template"]
    spec = pod["spec"]
    assert spec["hostNetwork"] is True and spec["hostPID"] is True
    assert spec["priorityClassName"] == "system-node-critical"
    (init,) = spec["initContainers"]
    assert init["securityContext"]["privileged"] is True
    script = init["args"][0]
    assert "nsenter --target 1 --mount --uts --ipc --net --pid" in script
    assert 'sh "/var/cache/model-agent/wheelhouse-0.1.0/install.sh"' in script
    assert '--set "metrics.address=0.0.0.0:9464"' in script
    (keeper,) = spec["containers"]
    assert keeper["ports"] == [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]
    host_root = next(v for v in spec["volumes"] if v["name"] == "host-root")
    assert host_root["hostPath"]["path"] == "/"

    service = r.one("Service")
    assert service["spec"]["clusterIP"] == "None"
    labels = pod["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    monitor = r.one("ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert all(service["metadata"]["labels"].get(k) == v for k, v in selector.items())
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    assert endpoint["honorLabels"] is True and "authorization" not in endpoint

    assert {
        c["metadata"]["name"]: c["handler"] for c in r.manifests if c["kind"] == "RuntimeClass"
    } == {
        "runc": "runc",
        "crun": "crun",
    }
    classes = {c["metadata"]["name"]: c for c in r.manifests if c["kind"] == "DeviceClass"}
    assert sorted(classes) == ["gpu.model-agent.io", "mig.gpu.model-agent.io"]
    type_of = 'device.attributes["gpu.model-agent.io"].type'
    assert classes["gpu.model-agent.io"]["spec"]["selectors"] == [
        {"cel": {"expression": f'device.driver == "gpu.model-agent.io" && {type_of} == "gpu"'}}
    ]
    assert classes["mig.gpu.model-agent.io"]["spec"]["selectors"] == [
        {"cel": {"expression": f'device.driver == "gpu.model-agent.io" && {type_of} == "mig"'}}
    ]
    # gpu.mode picks the agent's kubelet path, driver name and credentials.
    assert '--set "gpu.kubelet_api=dra"' in script
    assert '--set "gpu.dra.driver_name=gpu.model-agent.io"' in script
    assert '--set "gpu.dra.kubeconfig=/etc/kubernetes/kubelet.conf"' in script
    assert "ScaledObject" not in r.kinds() and "ScrapeConfig" not in r.kinds()


def test_alerts_cover_the_issue_and_pass_promtool(tmp_path):
    rule = rendered("defaults").one("PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "ModelAgentDown",
        "ModelAgentRecoveryTookLong",
        "ModelAgentImagePullFailures",
        "ContainerOOMKilled",
        "GPUXidError",
        "GPUUnhealthy",
    }
    assert (
        alerts["ModelAgentDown"]["expr"]
        == 'up{job=~"model-agent|scrapeConfig/model-agent/model-agent"} == 0'
    )
    # counters through increase(), never DCGM's last-XID gauge (tests/unit/test_alert_rules.py)
    xid = alerts["GPUXidError"]["expr"]
    assert "increase(model_agent_gpu_xid_errors_total[10m])" in xid
    assert "DCGM_FI_DEV_XID_ERRORS" not in xid
    assert "xid" in xid.partition("sum by (")[2].partition(")")[0]  # the XID is a label
    assert alerts["GPUUnhealthy"]["expr"] == "model_agent_gpu_healthy == 0"
    assert "model_agent_image_pulls_total" in alerts["ModelAgentImagePullFailures"]["expr"]
    assert "container_oom_events_total" in alerts["ContainerOOMKilled"]["expr"]
    recovery = alerts["ModelAgentRecoveryTookLong"]["expr"]
    assert "model_agent_recovery_duration_seconds" in recovery
    assert "max_over_time" not in recovery and "process_start_time_seconds" in recovery
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_is_grafana_json_with_the_metric_names():
    cm = rendered("defaults").one("ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["model-agent.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    text = "\n".join(exprs)
    assert "$metric:" not in json.dumps(dashboard)  # every placeholder was filled
    for name in (
        "model_agent_gpu_container_utilization_ratio",
        "model_agent_gpu_container_memory_used_bytes",
        "DCGM_FI_DEV_GPU_UTIL",
        "model_agent_image_pulls_total",
        "model_agent_cri_operation_duration_seconds_bucket",
    ):
        assert name in text
    titles = {p["title"] for p in dashboard["panels"]}
    assert {
        "GPU utilisation per pod",
        "Image pulls by result",
        "CRI latency p99 by operation",
    } <= titles


def test_gpu_nodes_with_dra_and_bearer_auth():
    r = rendered("gpu-nodes-dra")
    spec = r.one("DaemonSet")["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    script = spec["initContainers"][0]["args"][0]
    assert '--set "metrics.bearer_token_file=/etc/model-agent/metrics-auth/token"' in script
    assert '"--cgroup-driver=systemd"' in script
    secret = r.one("Secret")
    assert secret["stringData"] == {"token": "s3cret"}
    auth_volume = next(v for v in spec["volumes"] if v["name"] == "metrics-auth")
    assert auth_volume["secret"]["secretName"] == secret["metadata"]["name"]
    endpoint = r.one("ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": secret["metadata"]["name"], "key": "token"},
    }
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {
        "ca": {"secret": {"name": "agent-ca", "key": "ca.crt"}},
        "serverName": "model-agent",
    }
    names = sorted(m["metadata"]["name"] for m in r.manifests if m["kind"] == "DeviceClass")
    assert names == ["gpu.model-agent.io", "h200.gpu.model-agent.io", "mig.gpu.model-agent.io"]


def test_rotating_the_chart_made_auth_secret_rolls_the_installer():
    """The installer copies the Secret to the host only when its pod starts: a new token
    must change the pod template, the --set keys alone do not."""

    def annotations(auth: dict[str, Any]) -> dict[str, str]:
        r = render(CHART, {"metricsAuth": auth})
        return r.one("DaemonSet")["spec"]["template"]["metadata"]["annotations"]

    first = annotations({"type": "bearer", "token": "one"})
    second = annotations({"type": "bearer", "token": "two"})
    assert first["model-agent.io/install-config"] == second["model-agent.io/install-config"]
    assert first["model-agent.io/metrics-auth"] != second["model-agent.io/metrics-auth"]
    assert annotations({"type": "bearer", "token": "one"}) == first  # stable
    basic = annotations({"type": "basic", "username": "u", "password": "p1"})
    assert basic != annotations({"type": "basic", "username": "u", "password": "p2"})
    # an existingSecret is not the chart's to read: no checksum (README: rollout restart)
    existing = annotations({"type": "bearer", "existingSecret": "mine"})
    assert "model-agent.io/metrics-auth" not in existing
    assert "model-agent.io/metrics-auth" not in annotations({"type": "none"})


def test_device_plugin_mode_has_no_device_class():
    r = rendered("device-plugin")
    assert "DeviceClass" not in r.kinds()
    script = r.one("DaemonSet")["spec"]["template"]["spec"]["initContainers"][0]["args"][0]
    assert '--set "gpu.kubelet_api=device-plugin"' in script and "gpu.dra." not in script
    assert r.one("DaemonSet")["spec"]["template"]["spec"]["nodeSelector"] == {
        "nvidia.com/gpu.present": "true"
    }


def test_autoscaling_recipe():
    r = rendered("autoscaling")
    scaled = r.one("ScaledObject", "llm")
    assert scaled["metadata"]["namespace"] == "serving"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llm"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 8)
    queries = {t["name"]: t["metadata"] for t in spec["triggers"]}
    assert queries["queue-length"]["query"] == (
        'sum(vllm:num_requests_waiting{namespace="serving",pod=~"llm-.*"})'
    )
    assert queries["queue-length"]["threshold"] == "10"
    assert queries["gpu-utilization"]["query"] == (
        'sum(model_agent_gpu_container_utilization_ratio{namespace="serving",pod=~"llm-.*"})'
    )
    assert all(
        t["type"] == "prometheus" and t["metricType"] == "AverageValue" for t in spec["triggers"]
    )
    adapter = yaml.safe_load(r.one("ConfigMap", "model-agent-adapter-rules")["data"]["config.yaml"])
    series = {rule["name"]["as"]: rule for rule in adapter["rules"]}
    assert set(series) == {
        "vllm_num_requests_waiting",
        "model_server_requests_in_flight",
        "model_agent_gpu_container_utilization_ratio",
        "model_agent_gpu_container_memory_used_bytes",
    }
    rule = series["model_server_requests_in_flight"]
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert rule["metricsQuery"] == "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)"


def test_monitoring_off_and_scrape_config_alternative():
    assert set(rendered("monitoring-off").kinds()) == {"RuntimeClass", "DeviceClass"}
    r = rendered("scrapeconfig-basic-auth")
    assert sorted(r.kinds()) == ["ConfigMap", "PrometheusRule", "ScrapeConfig"]
    spec = r.one("ScrapeConfig")["spec"]
    assert spec["kubernetesSDConfigs"] == [
        {"role": "Node", "selectors": [{"role": "Node", "label": "nvidia.com/gpu.present=true"}]}
    ]
    assert spec["relabelings"][0] == {
        "sourceLabels": ["__meta_kubernetes_node_address_InternalIP"],
        "targetLabel": "__address__",
        "replacement": "${1}:9464",
    }
    assert spec["basicAuth"] == {
        "username": {"name": "agent-scrape", "key": "username"},
        "password": {"name": "agent-scrape", "key": "password"},
    }
    assert (spec["scheme"], spec["tlsConfig"]) == ("HTTPS", {"insecureSkipVerify": True})
    assert "Secret" not in r.kinds()  # an existing one is used


def test_the_charts_metric_names_are_the_ones_the_agent_exports():
    """metricNames (alerts, dashboard, autoscaling) name series the agent really serves,
    except the model server's own (scraped from the model's pods)."""
    from agent.metrics import cadvisor, names

    exported = {getattr(names, n) for n in names.__all__ if isinstance(getattr(names, n), str)}
    exported |= {f.name for f in (*names.DCGM, *names.GPU)}
    exported |= {d.name for d in cadvisor.DESCRIPTORS}
    with open(os.path.join(CHART, "values.yaml")) as f:
        metric_names = yaml.safe_load(f)["metricNames"]
    ours = {k: v for k, v in metric_names.items() if not v.startswith("model_server_")}
    assert set(ours) >= {"gpuHealthy", "recoveryDuration", "gpuContainerUtilization"}
    assert {k: v for k, v in ours.items() if v not in exported} == {}
