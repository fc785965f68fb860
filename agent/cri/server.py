"""The CRI gRPC server on its unix socket.

The socket file is claimed carefully: a socket another process still answers
on means another agent is running (refuse to start); a socket nobody answers
on is a leftover of a crash (remove it); anything else at that path is left
alone and reported. The parent directory is 0700 and the socket 0660, as the
kubelet and root-owned tools are the only clients.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat

import grpc
from grpc_reflection.v1alpha import reflection

from agent.api.cri.runtime.v1 import api_pb2 as pb, api_pb2_grpc as pb_grpc
from agent.cri.image_service import ImageService
from agent.cri.rpc import RpcInterceptor
from agent.cri.runtime_service import RuntimeService
from agent.errors import AgentError, FailedPrecondition

__all__ = ["CriServer", "claim_socket"]

#: The kubelet's CRI client accepts messages up to 16 MiB (cri-client utils.go).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def claim_socket(path: str) -> None:
    """Make ``path`` free for our socket, or explain why it cannot be."""
    parent = os.path.dirname(path)
    os.makedirs(parent, mode=0o700, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FailedPrecondition(f"{path} exists and is not a socket; not touching it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # nobody listens: a leftover of an agent that died
        return
    except OSError as exc:
        raise FailedPrecondition(f"cannot check socket {path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise FailedPrecondition(f"another process is already serving {path}; refusing to start")


class CriServer:
    """Both CRI services (and gRPC reflection) behind the interceptor."""

    def __init__(
        self,
        path: str,
        *,
        runtime: RuntimeService,
        images: ImageService,
        interceptor: RpcInterceptor,
    ) -> None:
        self.path = path
        self._bound = False
        self._server = grpc.aio.server(
            interceptors=[interceptor],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        pb_grpc.add_RuntimeServiceServicer_to_server(runtime, self._server)
        pb_grpc.add_ImageServiceServicer_to_server(images, self._server)
        services = [s.full_name for s in pb.DESCRIPTOR.services_by_name.values()]
        reflection.enable_server_reflection([*services, reflection.SERVICE_NAME], self._server)

    async def start(self) -> None:
        claim_socket(self.path)
        # Bind under a restrictive umask so the socket is never briefly world-writable.
        old = os.umask(0o177)
        try:
            if self._server.add_insecure_port(f"unix://{self.path}") == 0:
                raise AgentError(f"cannot listen on {self.path}")
        finally:
            os.umask(old)
        self._bound = True
        os.chmod(self.path, 0o660)
        await self._server.start()

    async def stop(self, grace: float) -> None:
        """Refuse new calls, let in-flight ones finish for ``grace`` seconds."""
        await self._server.stop(grace)
        if self._bound:  # never remove a socket another agent is serving
            self._bound = False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def wait(self) -> None:
        await self._server.wait_for_termination()
