"""The chart's alert rules judged by ``promtool test rules``: input series over time, the alerts
that must fire (labels and annotations as rendered) and those that must have stopped.

The rules are the PrometheusRule Helm's engine renders (tests/support/helm.py); promtool is
Debian's ``prometheus`` package (2.42 here). Both skip the test when missing."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.helm import render

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("helm_sdkpy") is None,
    reason="helm-sdkpy is not installed (scripts/setup installs it with --ignore-requires-python)",
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(REPO, "charts", "model-agent")
JOB = "model-agent"  # the Service's job name for the release "model-agent"


def _rules(values: dict[str, Any]) -> list[dict[str, Any]]:
    rule = render(CHART, values).one("PrometheusRule")
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    return promtool


def _promtool_test(tmp_path: Path, groups: list[dict[str, Any]], tests: list[dict[str, Any]]):
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    suite = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    return subprocess.run(
        [_promtool(), "test", "rules", "suite.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _alert_tests(
    series: list[dict[str, str]], alert: str, at: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """One promtool test: ``series`` sampled every minute, ``alert``'s firing at each time."""
    checks = [
        {"eval_time": t, "alertname": alert, "exp_alerts": alerts} for t, alerts in at.items()
    ]
    return [{"interval": "1m", "input_series": series, "alert_rule_test": checks}]


def _series(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


_GPU0 = {
    "gpu": "0",
    "UUID": "GPU-0b9c1e0a",
    "pci_bus_id": "00000000:3B:00.0",
    "device": "nvidia0",
    "model_name": "NVIDIA H200",
    "Hostname": "node-1",
}
_GPU1 = {**_GPU0, "gpu": "1", "UUID": "GPU-1f2e3d4c", "pci_bus_id": "00000000:86:00.0"}
_TARGET = {"job": JOB, "instance": "10.0.0.1:9464"}


def _xid_alert(gpu: dict[str, str], xid: str, count: str, window: str = "10m") -> dict[str, Any]:
    keep = ("instance", "Hostname", "gpu", "UUID", "pci_bus_id", "model_name")
    labels = {k: v for k, v in {**_TARGET, **gpu}.items() if k in keep}
    return {
        "exp_labels": {**labels, "xid": xid, "severity": "critical"},
        "exp_annotations": {
            "summary": (
                f"GPU {gpu['gpu']} ({gpu['UUID']}, {gpu['model_name']}) on {gpu['Hostname']} "
                f"reported XID {xid} in the last {window}"
            ),
            "description": (
                f"About {count} XID {xid} errors in {window} on GPU {gpu['gpu']} "
                f"({gpu['pci_bus_id']}). An XID is the NVIDIA driver reporting a GPU error "
                "(e.g. 48 double-bit ECC, 79 fallen off the bus); see `model_agent_gpu_healthy` "
                "and `journalctl -u model-agent` on the node."
            ),
        },
    }


def test_gpu_xid_alert_fires_after_an_xid_and_stops_after_the_window(tmp_path):
    groups = _rules({})
    (rule,) = [r for g in groups for r in g["rules"] if r["alert"] == "GPUXidError"]
    assert "model_agent_gpu_xid_errors_total" in rule["expr"]
    assert "DCGM_FI_DEV_XID_ERRORS" not in rule["expr"]  # the gauge holds the last XID forever
    assert "[10m]" in rule["expr"] and "offset 10m" in rule["expr"]
    counter = "model_agent_gpu_xid_errors_total"
    series = [
        # GPU 0: no XID for 20 minutes, XID 79 at 20m (the counter's series appears at 1), a
        # second XID 79 at 50m.
        {"series": _series(counter, {**_TARGET, **_GPU0, "xid": "79"}), "values": "_x20 1x29 2x30"},
        # GPU 1: three XID 31 before these samples began, the agent restarting at 35m (the
        # series is gone: no XID since the start), a new XID 31 at 40m (a counter reset).
        {"series": _series(counter, {**_TARGET, **_GPU1, "xid": "31"}), "values": "3x34 _x5 1x40"},
        # What the old rule read: DCGM's gauge keeps the last XID, long after it happened.
        {
            "series": _series("DCGM_FI_DEV_XID_ERRORS", {**_TARGET, **_GPU0, "modelName": "H200"}),
            "values": "0x19 79x61",
        },
    ]
    # (In the first 10m GPU 1's series is new to this Prometheus and counts as an XID: a
    # counter first scraped above 0 looks like a first XID. Not checked here.)
    at = {
        "16m": [],  # GPU 1's old XIDs do not fire; no XID on GPU 0 yet
        "21m": [_xid_alert(_GPU0, "79", "1")],  # the first XID: a series new in the window
        "29m": [_xid_alert(_GPU0, "79", "1")],  # still inside the 10m window
        "35m": [],  # the window has passed: resolved, though DCGM's gauge still reads 79
        "37m": [],  # the agent restarted: no series, nothing fires
        "41m": [_xid_alert(_GPU1, "31", "1")],  # XID 31 again, after the counter reset
        "51m": [_xid_alert(_GPU0, "79", "1")],  # the second XID 79
        "65m": [],  # both windows over
    }
    done = _promtool_test(tmp_path, groups, _alert_tests(series, "GPUXidError", at))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_xid_window_is_a_value(tmp_path):
    groups = _rules({"monitoring": {"prometheusRule": {"xidWindow": "30m"}}})
    (rule,) = [r for g in groups for r in g["rules"] if r["alert"] == "GPUXidError"]
    assert "[30m]" in rule["expr"] and "offset 30m" in rule["expr"] and "10m" not in rule["expr"]
    counter = "model_agent_gpu_xid_errors_total"
    series = [{"series": _series(counter, {**_TARGET, **_GPU0, "xid": "48"}), "values": "_x5 1x60"}]
    at = {"25m": [_xid_alert(_GPU0, "48", "1", "30m")], "45m": []}
    done = _promtool_test(tmp_path, groups, _alert_tests(series, "GPUXidError", at))
    assert done.returncode == 0, done.stdout + done.stderr


def test_recovery_alert_fires_only_in_the_hour_after_a_slow_start(tmp_path):
    """The recovery gauge keeps the last start's duration for the agent's whole life: the
    alert must not fire for as long as the agent then runs."""
    groups = _rules({})
    slow = {"job": JOB, "instance": "10.0.0.1:9464"}
    fast = {"job": JOB, "instance": "10.0.0.2:9464"}
    series = [
        {"series": _series("model_agent_recovery_duration_seconds", slow), "values": "120x180"},
        {"series": _series("process_start_time_seconds", slow), "values": "0x180"},
        {"series": _series("model_agent_recovery_duration_seconds", fast), "values": "5x180"},
        {"series": _series("process_start_time_seconds", fast), "values": "0x180"},
    ]
    firing = {
        "exp_labels": {"instance": "10.0.0.1:9464", "severity": "warning"},
        "exp_annotations": {
            "summary": "model-agent on 10.0.0.1:9464 took 2m 0s to recover at start",
            "description": "The runtime answered UNAVAILABLE while it reconciled its state.",
        },
    }
    at = {"30m": [firing], "90m": []}
    done = _promtool_test(tmp_path, groups, _alert_tests(series, "ModelAgentRecoveryTookLong", at))
    assert done.returncode == 0, done.stdout + done.stderr
