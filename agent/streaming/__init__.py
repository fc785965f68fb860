"""The streaming server: exec, attach and port-forward over SPDY/3.1 and WebSocket.

The CRI ``Exec``/``Attach``/``PortForward`` RPCs park a request under a one-time
token (``tokens``) and answer the server's URL (``server``); the kubelet or
crictl then dials it. ``client`` is the same protocols' client side, for
``model-agent ctl``. It sees the runtime only through ``StreamingBackend``.
"""

from agent.streaming import client
from agent.streaming.server import StreamingBackend, StreamingServer, StreamingTimeouts
from agent.streaming.tokens import AttachRequest, ExecRequest, PortForwardRequest

__all__ = [
    "AttachRequest",
    "ExecRequest",
    "PortForwardRequest",
    "StreamingBackend",
    "StreamingServer",
    "StreamingTimeouts",
    "client",
]
