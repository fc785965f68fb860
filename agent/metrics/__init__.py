"""Prometheus metrics: names in one place, collectors, the HTTP exposition.

Everything lives in a registry the composition root creates (never the
process-global one), so tests and several agents in one process stay apart.
``names`` lists every metric; ``rpc`` (CRI calls), ``images`` (pulls) and
``runtime`` (starts, cold starts, OOM kills, restarts, recovery) are recorded as
things happen; ``exporter.NodeMetrics`` reads pods, containers (``containers``,
``cadvisor``), GPUs (``gpu``, ``gpu_reading``) and the image store at scrape time;
``exposition`` renders them; ``server`` serves ``/metrics`` (``access``: TLS and
scrape auth). Imports ``pods``, ``gpu`` and ``db``, never ``images`` or ``cri``.
"""

# Exports are resolved lazily (PEP 562), as agent.gpu's are: the GPU families and their
# reader import only gpu, db and prometheus_client, so the real-NVML checks
# (tests/gpu) run them on a GPU machine without the agent's other dependencies.
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.metrics import cadvisor, names
    from agent.metrics.exporter import NodeMetrics
    from agent.metrics.images import PullMetrics
    from agent.metrics.rpc import RpcMetrics
    from agent.metrics.runtime import RuntimeMetrics
    from agent.metrics.server import MetricsServer

_EXPORTS = {
    "MetricsServer": "agent.metrics.server",
    "NodeMetrics": "agent.metrics.exporter",
    "PullMetrics": "agent.metrics.images",
    "RpcMetrics": "agent.metrics.rpc",
    "RuntimeMetrics": "agent.metrics.runtime",
}
_MODULES = {"cadvisor", "names"}

__all__ = [
    "MetricsServer",
    "NodeMetrics",
    "PullMetrics",
    "RpcMetrics",
    "RuntimeMetrics",
    "cadvisor",
    "names",
]


def __getattr__(name: str) -> Any:
    import importlib

    if name in _MODULES:
        return importlib.import_module(f"agent.metrics.{name}")
    if name not in _EXPORTS:
        raise AttributeError(f"module 'agent.metrics' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
