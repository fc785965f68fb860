"""Log formats (text/json, UTC timestamps) and the sd_notify client, against real sockets."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import uuid

import pytest

from agent._util.sdnotify import Notifier
from agent.log import RpcContext, configure, current_rpc, utc_timestamp

UTC_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_utc_timestamp_is_utc_whatever_the_local_zone(monkeypatch):
    monkeypatch.setenv("TZ", "America/New_York")
    assert utc_timestamp(1796126400.1234) == "2026-12-01T12:00:00.123Z"


def test_text_format_has_a_utc_timestamp(capsys, restore_logging):
    configure("info", "text")
    logging.getLogger("agent.test").info("hello %s", "there")
    line = capsys.readouterr().err.strip()
    stamp, level, rest = line.split(" ", 2)
    assert UTC_MS.match(stamp), line
    assert level == "INFO" and rest.endswith("agent.test: hello there")


def test_json_format_one_object_per_line_with_rpc_and_traceback(capsys, restore_logging):
    configure("debug", "json")
    log = logging.getLogger("agent.test")
    token = current_rpc.set(RpcContext("RunPodSandbox", "r-17"))
    try:
        log.info("pod %s\nsecond line", "p1")
    finally:
        current_rpc.reset(token)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2  # a newline inside a message stays inside its JSON string
    first, second = (json.loads(line) for line in lines)
    assert UTC_MS.match(first["time"])
    assert first == {
        "time": first["time"],
        "level": "info",
        "logger": "agent.test",
        "msg": "pod p1\nsecond line",
        "rpc": "RunPodSandbox",
        "request_id": "r-17",
    }
    assert second["level"] == "error" and "RuntimeError: boom" in second["exc"]
    assert "rpc" not in second


def test_unknown_format_is_refused(restore_logging):
    with pytest.raises(ValueError, match="unknown log format"):
        configure("info", "xml")


def datagram_socket(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_notify_to_a_path_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    with datagram_socket(path) as sock:
        notifier = Notifier({"NOTIFY_SOCKET": path})
        assert notifier.enabled
        assert notifier.ready("serving")
        message = sock.recv(4096).decode().split("\n")
        assert message == ["READY=1", "STATUS=serving", f"MAINPID={os.getpid()}"]
        assert notifier.stopping("bye")
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=bye"


def test_notify_to_an_abstract_socket():
    name = f"model-agent-test-{uuid.uuid4().hex}"
    with datagram_socket(b"\0" + name.encode()) as sock:
        assert Notifier({"NOTIFY_SOCKET": f"@{name}"}).status("recovering")
        assert sock.recv(4096) == b"STATUS=recovering"


def test_notify_socket_is_taken_out_of_the_environment(tmp_path, monkeypatch):
    """Children (runc, conmon, CNI plugins) must not inherit it: runc would forward the
    containers' notify messages to the agent's unit."""
    path = str(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    with datagram_socket(path) as sock:
        notifier = Notifier()
        assert "NOTIFY_SOCKET" not in os.environ
        assert notifier.status("up")
        assert sock.recv(4096) == b"STATUS=up"


def test_notify_without_socket_does_nothing_and_bad_values_are_refused(tmp_path):
    assert not Notifier({}).enabled
    assert Notifier({}).ready("x") is False
    assert Notifier({"NOTIFY_SOCKET": "relative/path"}).enabled is False
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert gone.ready("x") is False  # logged, never raised: the agent keeps serving
    with pytest.raises(ValueError, match="span lines"):
        Notifier({"NOTIFY_SOCKET": str(tmp_path / "s")}).status("two\nlines")


def test_log_format_flag_and_env_reach_the_config(tmp_path, capsys, monkeypatch):
    from agent.cli import main

    path = tmp_path / "c.toml"
    path.write_text("")
    assert main(["config", "--config", str(path), "--log-format", "json"]) == 0
    assert 'log_format = "json"' in capsys.readouterr().out
    monkeypatch.setenv("MODEL_AGENT_LOG_FORMAT", "json")
    assert main(["config", "--config", str(path)]) == 0
    assert 'log_format = "json"' in capsys.readouterr().out
