"""Runtime metrics that follow events: container start latency, cold starts, OOM kills,
agent restarts and what a start recovered.

``RuntimeMetrics.watch`` follows ``PodService.subscribe_events`` (the stream behind
``GetContainerEvents``) for the agent's lifetime:

* a container's start latency is ``started_at - created_at`` of its record when its
  STARTED event arrives (CreateContainer → running);
* a pod's cold start is the time from the first ``PullImage`` made for the pod
  (the kubelet names the pod in ``sandbox_config``; ``pull_requested`` records it)
  to its first container running, if one of its pulls fetched an image; a pod whose
  images were all present (``imagePullPolicy: Always`` still calls ``PullImage``) is
  not a cold start;
* an OOM kill is a STOPPED event whose record says ``OOMKilled``.

Pods and containers by state, and the image store, are read at scrape time by
``exporter``. Imports only ``pods`` types.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agent.metrics import names
from agent.pods import ContainerEvent, EventKind, SubscriberTooSlow

__all__ = ["RuntimeMetrics"]

log = logging.getLogger(__name__)

_START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# A cached image starts in a second; a cold 20 GB model image takes many minutes.
_COLD_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
#: Pull starts of pods that never ran a container are forgotten after this long.
_PULL_TTL_NS = 3600 * 10**9
_MAX_PENDING = 4096


class RuntimeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.start_duration = Histogram(
            names.CONTAINER_START_DURATION_SECONDS,
            "Time from CreateContainer to the container running",
            buckets=_START_BUCKETS,
            registry=registry,
        )
        self.cold_start = Histogram(
            names.POD_COLD_START_DURATION_SECONDS,
            "Time from the first image pull for a pod to its first container running "
            "(pods that needed a pull)",
            buckets=_COLD_BUCKETS,
            registry=registry,
        )
        self.oom_kills = Counter(
            names.CONTAINER_OOM_KILLS_TOTAL.removesuffix("_total"),
            "Containers that ended killed by the kernel's OOM killer",
            registry=registry,
        )
        self.restarts = Counter(
            names.RESTARTS_TOTAL.removesuffix("_total"),
            "Times the agent started again on this node's state (its first start is not one)",
            registry=registry,
        )
        self.recovery_duration = Gauge(
            names.RECOVERY_DURATION_SECONDS,
            "How long the last start took to recover its state (RPCs answered UNAVAILABLE)",
            registry=registry,
        )
        self.recovered = Gauge(
            names.RECOVERED_OBJECTS,
            "Objects the last start found and adopted, by kind (pods, containers, "
            "running_containers, images)",
            ["kind"],
            registry=registry,
        )
        # pod uid -> (ns of its first pull, whether any of its pulls fetched an image)
        self._pull_starts: dict[str, tuple[int, bool]] = {}

    # -- told by the composition root and the CRI layer -----------------------------

    def agent_started(self, previous_starts: int) -> None:
        """``previous_starts``: how often an agent started on this state before this one."""
        self.restarts.inc(previous_starts)

    def recovery_finished(self, seconds: float, counts: dict[str, int]) -> None:
        self.recovery_duration.set(seconds)
        for kind, count in counts.items():
            self.recovered.labels(kind).set(count)

    def pull_requested(self, pod_uid: str, at_ns: int | None = None, fetched: bool = True) -> None:
        """A ``PullImage`` for the pod ``pod_uid`` started at ``at_ns`` (the first one
        counts); ``fetched``: it found the image absent or changed, so the pod is cold."""
        if not pod_uid:
            return
        now = time.time_ns() if at_ns is None else at_ns
        known = self._pull_starts.get(pod_uid)
        if known is not None:
            self._pull_starts[pod_uid] = (min(known[0], now), known[1] or fetched)
            return
        if len(self._pull_starts) >= _MAX_PENDING:
            self._expire(now)
        if len(self._pull_starts) < _MAX_PENDING:
            self._pull_starts[pod_uid] = (now, fetched)

    def _expire(self, now: int) -> None:
        for uid, (started, _) in list(self._pull_starts.items()):
            if now - started > _PULL_TTL_NS:
                del self._pull_starts[uid]

    # -- events -------------------------------------------------------------------------

    def observe(self, event: ContainerEvent) -> None:
        sandbox = event.sandbox
        container = next((c for c in event.containers if c.id == event.container_id), None)
        if container is None:  # a sandbox event
            if event.kind is EventKind.DELETED and sandbox is not None:
                self._pull_starts.pop(sandbox.config.metadata.uid, None)
            return
        if event.kind is EventKind.STARTED and container.started_at:
            if container.created_at:
                seconds = (container.started_at - container.created_at) / 1e9
                self.start_duration.observe(max(0.0, seconds))
            first = not any(c.started_at for c in event.containers if c.id != container.id)
            if first and sandbox is not None:
                pulled = self._pull_starts.pop(sandbox.config.metadata.uid, None)
                if pulled is not None and pulled[1]:
                    seconds = (container.started_at - pulled[0]) / 1e9
                    self.cold_start.observe(max(0.0, seconds))
        elif event.kind is EventKind.STOPPED and container.reason == "OOMKilled":
            self.oom_kills.inc()

    async def watch(self, subscribe: Callable[[], AsyncIterator[ContainerEvent]]) -> None:
        """Follow the event stream until cancelled (resubscribing if it ever drops us)."""
        while True:
            try:
                async for event in subscribe():
                    self.observe(event)
            except SubscriberTooSlow as exc:
                log.warning("metrics: %s; following events again", exc)
            await asyncio.sleep(0.1)
