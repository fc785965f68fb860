"""A real ``model-agent serve`` under a stand-in for systemd's notify socket.

systemd (``Type=notify``) starts the kubelet only after ``READY=1``; so READY must come only once
every RPC answers (recovery done), and ``STOPPING=1`` when a stop begins. The test binds the
datagram socket systemd would and reads what the agent sends; the logs are JSON lines."""

from __future__ import annotations

import json
import socket

import pytest

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.ctl.client import CriClient
from tests.support.agent import AgentProcess

pytestmark = pytest.mark.integration


async def test_ready_after_recovery_stopping_on_sigterm_and_json_logs(short_dir, monkeypatch):
    path = f"{short_dir}/notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    try:
        agent = AgentProcess(
            short_dir,
            f'[agent]\nlog_format = "json"\n[network]\ncni_conf_dir = "{short_dir}/cni"\n',
        )
        with agent:
            ready = dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())
            assert ready["READY"] == "1"
            assert ready["MAINPID"] == str(agent.pid)
            assert ready["STATUS"] == f"serving CRI on unix://{agent.socket}"
            # READY means recovered: calls other than Version/Status answer now.
            async with CriClient(agent.socket, timeout=10) as cri:
                listed = await cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest())
                assert list(listed.items) == []
            assert agent.stop() == 0
        stopping = sock.recv(4096).decode().splitlines()
        assert stopping[0] == "STOPPING=1"
    finally:
        sock.close()
    records = [json.loads(line) for line in agent.log().splitlines() if line.strip()]
    assert records, "no log lines"
    assert all(r["time"].endswith("Z") and r["level"] and r["logger"] for r in records)
    assert any("ready on unix://" in r["msg"] for r in records)
