"""A real ``model-agent serve`` process for tests that kill, restart or crash it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import TracebackType


class AgentProcess:
    """``model-agent serve`` rooted in ``base`` with ``config`` (TOML text).

    ``start()`` returns once the agent printed that it serves; ``kill()`` is a
    ``kill -9``; ``stop()`` a clean SIGTERM. Leaving the ``with`` block stops
    it cleanly if it still runs, so the agent releases what it mounted.
    """

    def __init__(self, base: str, config: str = "") -> None:
        self.base = base
        self.config_path = os.path.join(base, "config.toml")
        with open(self.config_path, "w") as f:
            f.write(config)
        self.root_dir = os.path.join(base, "root")
        self.state_dir = os.path.join(base, "state")
        self.socket = os.path.join(self.state_dir, "model-agent.sock")
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> AgentProcess:
        env = dict(
            os.environ,
            MODEL_AGENT_ROOT_DIR=self.root_dir,
            MODEL_AGENT_STATE_DIR=self.state_dir,
            MODEL_AGENT_METRICS_ADDRESS="127.0.0.1:0",
            MODEL_AGENT_CONFIG=self.config_path,
        )
        log = open(os.path.join(self.base, "agent.log"), "a")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "serve"],
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        finally:
            log.close()
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "serving CRI" not in line:
            self.proc.wait(timeout=30)
            raise AssertionError(f"agent did not start:\n{self.log()}")
        return self

    def log(self) -> str:
        with open(os.path.join(self.base, "agent.log")) as f:
            return f.read()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """``kill -9``: no cleanup of any kind."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=30)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.communicate(timeout=60)
        return self.proc.returncode

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
