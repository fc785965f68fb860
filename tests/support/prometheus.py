"""A real Prometheus server (the Debian package) on 127.0.0.1, started and always stopped.

``Prometheus(root_dir, targets)`` scrapes the given ``host:port`` targets every second
(``honor_labels: true``, as the chart's ServiceMonitor sets it) with its TSDB under
``root_dir``; ``target_labels`` adds labels to a target's series, as Kubernetes service
discovery adds ``namespace`` and ``pod`` to a pod's; ``query(promql)`` runs an instant
query through the HTTP API and returns the result vector. Independent of ``agent/``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

__all__ = ["BINARY", "Prometheus", "promtool_check_metrics"]

BINARY = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
START_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def promtool_check_metrics(text: str) -> tuple[int, list[str]]:
    """``promtool check metrics`` on an exposition: (exit status, its complaints)."""
    result = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    lines = (result.stdout + result.stderr).splitlines()
    return result.returncode, [line for line in lines if line.strip()]


class Prometheus:
    def __init__(
        self,
        root_dir: str,
        targets: Sequence[str],
        *,
        metrics_path: str = "/metrics",
        interval: str = "1s",
        target_labels: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.root_dir = os.path.abspath(root_dir)
        self.targets = list(targets)
        self.target_labels = {t: dict(labels) for t, labels in (target_labels or {}).items()}
        self.metrics_path = metrics_path
        self.interval = interval
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        os.makedirs(self.root_dir, exist_ok=True)
        config = {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "scrape_configs": [
                {
                    "job_name": "model-agent",
                    "honor_labels": True,
                    "metrics_path": self.metrics_path,
                    "static_configs": [
                        {"targets": [t], "labels": self.target_labels.get(t, {})}
                        for t in self.targets
                    ],
                }
            ],
        }
        config_path = os.path.join(self.root_dir, "prometheus.yml")
        with open(config_path, "w") as f:
            json.dump(config, f)  # JSON is YAML
        try:
            for attempt in range(3):  # the free port may be taken before Prometheus binds it
                port = _free_port()
                self.url = f"http://127.0.0.1:{port}"
                with open(os.path.join(self.root_dir, "prometheus.log"), "ab") as log:
                    self._process = subprocess.Popen(
                        [
                            BINARY,
                            f"--config.file={config_path}",
                            f"--storage.tsdb.path={self.root_dir}/data",
                            f"--web.listen-address=127.0.0.1:{port}",
                            "--log.level=warn",
                        ],
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                    )
                if self._wait_ready() or attempt == 2:
                    break
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"prometheus did not start:\n{self.log()}")
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return True
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector: ``[{"metric": {...}, "value": [ts, "v"]}]``."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as resp:
            answer = json.load(resp)
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def wait_for(self, promql: str, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Query until the result has ``count`` series (Prometheus scrapes every second)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if len(result) == count or time.monotonic() > deadline:
                return result
            time.sleep(0.5)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def log(self) -> str:
        try:
            with open(os.path.join(self.root_dir, "prometheus.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
