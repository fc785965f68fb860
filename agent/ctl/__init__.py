"""``model-agent ctl``: a small crictl-like CRI client.

It speaks CRI over the agent's socket like the kubelet or crictl would, so it
uses the protobuf types directly; tests drive the agent with the same
:class:`~agent.ctl.client.CriClient`.
"""

from agent.ctl import commands
from agent.ctl.client import CriClient

__all__ = ["CriClient", "commands"]
