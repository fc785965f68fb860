"""``model-agent ctl``: a crictl-like CRI client.

It speaks CRI over the agent's socket like the kubelet or crictl would, so it
uses the protobuf types directly; tests drive the agent with the same
:class:`~agent.ctl.client.CriClient`. ``commands`` builds the parser and runs a
verb; each family of verbs has its own module (``pod_verbs``,
``container_verbs``, ``image_verbs``, ``stream_verbs`` and ``logs``,
``runtime_verbs``), printing goes through ``output``. It imports only
``agent.api``, ``agent.images`` and ``agent.streaming`` (and ``errors``).
"""

from agent.ctl import commands
from agent.ctl.client import CriClient

__all__ = ["CriClient", "commands"]
