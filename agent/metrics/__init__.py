"""Prometheus metrics: names in one place, collectors, the HTTP exposition.

Everything lives in a registry the composition root creates (never the
process-global one), so tests and several agents in one process stay apart.
``names`` lists every metric; ``rpc`` (CRI calls), ``images`` (pulls) and
``runtime`` (starts, cold starts, OOM kills, restarts, recovery) are recorded as
things happen; ``exporter.NodeMetrics`` reads pods, containers (``containers``,
``cadvisor``), GPUs (``gpu``, ``gpu_reading``) and the image store at scrape time;
``server`` serves ``/metrics`` (``access``: TLS and scrape auth).
"""

from agent.metrics import cadvisor, names
from agent.metrics.exporter import NodeMetrics
from agent.metrics.images import PullMetrics
from agent.metrics.rpc import RpcMetrics
from agent.metrics.runtime import RuntimeMetrics
from agent.metrics.server import MetricsServer

__all__ = [
    "MetricsServer",
    "NodeMetrics",
    "PullMetrics",
    "RpcMetrics",
    "RuntimeMetrics",
    "cadvisor",
    "names",
]
