"""Prometheus metrics: names in one place, metric objects, the HTTP exposition.

Everything lives in a registry the composition root creates (never the
process-global one), so tests and several agents in one process stay apart.
"""

from agent.metrics import cadvisor, names
from agent.metrics.gpu_health import GpuHealthCollector
from agent.metrics.images import PullMetrics
from agent.metrics.rpc import RpcMetrics
from agent.metrics.server import MetricsServer

__all__ = ["GpuHealthCollector", "MetricsServer", "PullMetrics", "RpcMetrics", "cadvisor", "names"]
