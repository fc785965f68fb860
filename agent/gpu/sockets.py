"""gRPC servers on unix sockets that notice when their socket file is taken away.

The kubelet-facing plugins live on sockets in the kubelet's directories, and the
kubelet (or an operator) may delete those files: a kubelet restart wipes
``device-plugins/``, a re-created ``plugins_registry/`` loses the registration socket.
``UnixGrpcServer`` binds a fresh ``grpc.aio`` server (a stopped one cannot restart),
remembers the socket's inode, and ``intact()`` says whether the file at the path is
still the one it made; the plugins poll that and call ``restart()``. A stale socket
left by a crashed agent is replaced; anything else at the path is refused. Imports
nothing of the agent but ``errors``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Callable

import grpc

from agent.errors import AgentError, FailedPrecondition

__all__ = ["UnixGrpcServer"]

log = logging.getLogger(__name__)


class UnixGrpcServer:
    def __init__(
        self, path: str, add_services: Callable[[grpc.aio.Server], None], *, mode: int = 0o660
    ) -> None:
        self.path = path
        self._add = add_services
        self._mode = mode
        self._server: grpc.aio.Server | None = None
        self._inode: tuple[int, int] | None = None
        self.starts = 0

    @property
    def serving(self) -> bool:
        return self._server is not None

    def intact(self) -> bool:
        """Whether the file at ``path`` is still the socket this server bound."""
        try:
            st = os.lstat(self.path)
        except OSError:
            return False
        return stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == self._inode

    async def start(self) -> None:
        parent = os.path.dirname(self.path)
        os.makedirs(parent, mode=0o750, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(self.path)
            if not stat.S_ISSOCK(st.st_mode):
                raise FailedPrecondition(f"{self.path} exists and is not a socket; not touching it")
            os.unlink(self.path)  # ours from before, or a crashed agent's
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self._add(server)
        old = os.umask(0o177)
        try:
            if server.add_insecure_port(f"unix://{self.path}") == 0:
                raise AgentError(f"cannot listen on {self.path}")
        finally:
            os.umask(old)
        os.chmod(self.path, self._mode)
        await server.start()
        st = os.lstat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        self._server = server
        self.starts += 1

    async def stop(self, grace: float | None = 0) -> None:
        """Stop serving and remove the socket (only if it is still ours)."""
        server, self._server = self._server, None
        if server is None:
            return
        ours = self.intact()
        await server.stop(grace)
        if ours:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self._inode = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()
