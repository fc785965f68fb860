"""Scrape-time metrics of the node: pods and containers, GPUs, the image store, the process.

``NodeMetrics`` is the server's scrape source. Before each scrape the server
awaits ``refresh``, which gathers, at most once per
``metrics.min_collect_interval_seconds`` (concurrent scrapes share one gathering):

* the pod and container records (``PodService.records``, as the exit watcher keeps
  them) for ``model_agent_pods{state}`` / ``model_agent_containers{state}`` and labels;
* with ``metrics.container_metrics``, ``PodService.pod_usages`` (the cgroups read at
  call time, the same data as the CRI stats) for the cAdvisor-named families;
* with GPUs, one ``GpuReader.read`` in a thread (every NVML call of the scrape, the
  assignment record, the DRA checkpoint), then PID → container: from the processes the
  cgroups just listed, ``/proc/<pid>/cgroup`` for the others;
* the image store's size, at most every 10 s (it walks the content store).

``families`` only turns the last gathering into families (``exposition``), in the
encoding thread, so the encoding never waits on I/O. A part that fails is logged and counted
(``model_agent_metrics_collect_errors_total``) and keeps its previous reading; the
others are still served. ``process_*`` and ``python_*`` come from
``prometheus_client``'s own collectors. XIDs come from the driver's event stream, as the
GPU health monitor reads it (``KubeletPlugins.observe_events``) or, when it does not run,
a thread of its own (``follow_gpu_events``); GPU health from ``GpuHealth``. Imports
``pods``, ``gpu``, ``db``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from agent.config import MetricsSection
from agent.db import MetadataDB
from agent.gpu import GpuEventStream, GpuHealth, GpuService
from agent.metrics import names
from agent.metrics.containers import container_families
from agent.metrics.exposition import COUNTER, GAUGE, Family, FamilyBuilder, LabelCache
from agent.metrics.gpu import ContainerRef, GpuFamilyOptions, gpu_families
from agent.metrics.gpu_reading import GpuReader, GpuReading, XidTracker
from agent.pods import (
    ContainerRecord,
    ContainerState,
    PodService,
    PodUsage,
    SandboxRecord,
    Selector,
)

__all__ = ["NodeMetrics"]

log = logging.getLogger(__name__)

_IMAGE_USAGE_SECONDS = 10.0
_SANDBOX_STATES = ("ready", "notready")
_CONTAINER_STATES = tuple(s.value.lower() for s in ContainerState)


@dataclass(slots=True)
class _Gathered:
    sandboxes: list[SandboxRecord] = field(default_factory=list)
    containers: list[ContainerRecord] = field(default_factory=list)
    usages: list[PodUsage] = field(default_factory=list)
    gpu: GpuReading | None = None
    image_bytes: int | None = None
    image_count: int | None = None
    seconds: dict[str, float] = field(default_factory=dict)


class NodeMetrics:
    def __init__(
        self,
        registry: CollectorRegistry,
        settings: MetricsSection,
        *,
        pods: PodService | None = None,
        gpu: GpuService | None = None,
        db: MetadataDB | None = None,
        image_usage: Callable[[], tuple[int, int]] | None = None,
        health: GpuHealth | None = None,
        proc_root: str = "/proc",
    ) -> None:
        self._settings = settings
        self._pods = pods
        self._gpu = gpu
        self._health = health
        self._image_usage = image_usage
        self._options = GpuFamilyOptions(
            hostname=settings.hostname or _hostname(), dcgm_names=settings.dcgm_names
        )
        self.xids = XidTracker()
        self._reader = GpuReader(db, proc_root)
        self._lock = asyncio.Lock()
        self._gathered = _Gathered()
        self._labels = LabelCache()  # kept across scrapes (the label sets rarely change)
        self._gathered_at = -math.inf
        self._images_at = -math.inf
        self._errors: dict[str, int] = {}
        self._events: tuple[threading.Thread, GpuEventStream] | None = None
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

    # -- gathering (on the event loop, before a scrape) -----------------------------

    async def refresh(self) -> None:
        """Gather what ``collect`` reads, unless the last gathering is recent enough."""
        if self._fresh():
            return
        async with self._lock:
            if self._fresh():
                return  # another scrape gathered while this one waited
            await self._gather()
            self._gathered_at = time.monotonic()

    def _fresh(self) -> bool:
        interval = self._settings.min_collect_interval_seconds
        return time.monotonic() - self._gathered_at < interval

    async def _gather(self) -> None:
        previous = self._gathered
        new = _Gathered(
            gpu=previous.gpu,
            image_bytes=previous.image_bytes,
            image_count=previous.image_count,
            usages=previous.usages,
        )
        started = time.perf_counter()
        if self._pods is not None:
            try:
                new.sandboxes, new.containers = self._pods.records()
            except Exception:
                self._failed("pods")
                new.sandboxes, new.containers = previous.sandboxes, previous.containers
        new.seconds["pods"] = time.perf_counter() - started
        known = [c.id for c in new.containers]
        usages_read, gpus_read = (
            await asyncio.gather(
                self._gather_usages(new), self._gather_gpus(new), self._gather_images(new)
            )
        )[:2]
        if gpus_read and new.gpu is not None:
            await self._attribute_gpu_processes(new, known, usages_read)
        self._gathered = new

    async def _gather_usages(self, new: _Gathered) -> bool:
        """Whether this gathering read the containers (else it keeps the last reading)."""
        if self._pods is None or not self._settings.container_metrics:
            new.usages = []
            return False
        started = time.perf_counter()
        try:  # a pod removed mid-read reads as gone (pods.stats): no retry needed
            new.usages = await self._pods.pod_usages(Selector(), processes=True)
            return True
        except Exception:
            self._failed("containers")
            return False
        finally:
            new.seconds["containers"] = time.perf_counter() - started

    async def _gather_gpus(self, new: _Gathered) -> bool:
        """Whether this gathering read the GPUs (else it keeps the last reading)."""
        if self._gpu is None:
            return False
        started = time.perf_counter()
        try:  # the inventory reads the driver too: a failure keeps the last reading
            inventory = self._gpu.inventory()
            if not inventory.gpus:
                new.gpu = None
                return False
            reading = await asyncio.to_thread(self._reader.read, self._gpu.backend, inventory)
            if self._health is not None:
                unhealthy = {u for u, h in self._health.devices().items() if not h.healthy}
                reading = dataclasses.replace(reading, unhealthy=frozenset(unhealthy))
            new.gpu = reading
            return True
        except Exception:
            self._failed("gpus")
            return False
        finally:
            new.seconds["gpus"] = time.perf_counter() - started

    async def _attribute_gpu_processes(
        self, new: _Gathered, known: list[str], usages_read: bool
    ) -> None:
        """Each GPU process's container: from the PIDs the container reading just found in
        the cgroups (read beside the GPUs: NVML releases the GIL), ``/proc`` for the rest."""
        assert new.gpu is not None
        listed: dict[int, str] = {}
        if usages_read:  # never an older reading's PIDs: a PID may have been reused since
            listed = {
                pid: usage.record.id
                for pod in new.usages
                for usage in pod.containers
                if usage.processes is not None
                for pid in usage.processes.pids
            }
        try:
            if self._reader.needs_proc(new.gpu, listed):
                new.gpu = await asyncio.to_thread(self._reader.attribute, new.gpu, known, listed)
            else:
                new.gpu = self._reader.attribute(new.gpu, known, listed)
        except Exception:
            self._failed("gpus")

    async def _gather_images(self, new: _Gathered) -> None:
        if self._image_usage is None:
            return
        now = time.monotonic()
        if now - self._images_at < max(
            _IMAGE_USAGE_SECONDS, self._settings.min_collect_interval_seconds
        ):
            return
        started = time.perf_counter()
        try:
            new.image_bytes, new.image_count = await asyncio.to_thread(self._image_usage)
            self._images_at = now
        except Exception:
            self._failed("images")
        new.seconds["images"] = time.perf_counter() - started

    def _failed(self, collector: str) -> None:
        log.exception("metrics: collecting %s failed; serving the previous reading", collector)
        self._errors[collector] = self._errors.get(collector, 0) + 1

    # -- the families of a scrape ------------------------------------------------------

    def families(self) -> list[Family]:
        """The last gathering as families (called in the encoding thread)."""
        g = self._gathered
        cache = self._labels
        cache.next_scrape()
        out: list[Family] = []
        if self._pods is not None:
            out += self._state_families(g, cache)
        if g.image_bytes is not None:
            store = FamilyBuilder(
                names.IMAGE_STORE_BYTES,
                "Bytes the image store holds on disk (unpacked layers and content blobs)",
                GAUGE,
                (),
                cache,
            )
            store.add((), float(g.image_bytes))
            images = FamilyBuilder(names.IMAGES, "Images the agent holds", GAUGE, (), cache)
            images.add((), float(g.image_count or 0))
            out += [store.family, images.family]
        if g.gpu is not None:
            refs = _container_refs(g.sandboxes, g.containers)
            out += gpu_families(
                g.gpu, refs, self.xids.last(), self.xids.counts(), self._options, cache
            )
        if self._settings.container_metrics:
            out += container_families(g.usages, cache)
        durations = FamilyBuilder(
            names.METRICS_COLLECT_DURATION_SECONDS,
            "How long the last gathering of each scrape-time collector took",
            GAUGE,
            ("collector",),
            cache,
        )
        for collector, seconds in sorted(g.seconds.items()):
            durations.add((collector,), seconds)
        errors = FamilyBuilder(
            names.METRICS_COLLECT_ERRORS_TOTAL,
            "Scrape-time collections that failed (the previous reading was served)",
            COUNTER,
            ("collector",),
            cache,
        )
        for collector, count in sorted(self._errors.items()):
            errors.add((collector,), float(count))
        return [*out, durations.family, errors.family]

    def _state_families(self, g: _Gathered, cache: LabelCache) -> list[Family]:
        pods = FamilyBuilder(
            names.PODS, "Pod sandboxes the agent runs, by state", GAUGE, ("state",), cache
        )
        counts = dict.fromkeys(_SANDBOX_STATES, 0)
        for sandbox in g.sandboxes:
            counts[sandbox.state.reported().value.lower()] += 1
        for state, count in counts.items():
            pods.add((state,), float(count))
        containers = FamilyBuilder(
            names.CONTAINERS, "Containers the agent knows, by state", GAUGE, ("state",), cache
        )
        counts = dict.fromkeys(_CONTAINER_STATES, 0)
        for container in g.containers:
            counts[container.state.value.lower()] += 1
        for state, count in counts.items():
            containers.add((state,), float(count))
        return [pods.family, containers.family]

    # -- XIDs from the driver ---------------------------------------------------------

    def follow_gpu_events(self) -> None:
        """Start the thread reading the backend's event stream (after the GPUs started)."""
        if self._gpu is None or self._events is not None:
            return
        backend = self._gpu.backend
        if not backend.status().available:
            return
        stream = backend.open_events()
        thread = threading.Thread(
            target=self._follow, args=(stream,), name="metrics-gpu-events", daemon=True
        )
        thread.start()
        self._events = (thread, stream)

    def _follow(self, stream: GpuEventStream) -> None:
        while True:
            try:
                events = stream.wait(1.0)
            except Exception:
                log.exception("metrics: reading GPU events failed; stopped following them")
                return
            if self._events is None or self._events[1] is not stream:
                return
            self.xids.observe(events)

    def stop_gpu_events(self) -> None:
        """Stop following events (blocks up to a few seconds; call it in a thread)."""
        if self._events is None:
            return
        thread, stream = self._events
        self._events = None
        stream.close()
        thread.join(timeout=5)


def _container_refs(
    sandboxes: list[SandboxRecord], containers: list[ContainerRecord]
) -> dict[str, ContainerRef]:
    pods = {s.id: s.config.metadata for s in sandboxes}
    refs = {}
    for c in containers:
        meta = pods.get(c.sandbox_id)
        refs[c.id] = ContainerRef(
            namespace=meta.namespace if meta else "",
            pod=meta.name if meta else "",
            name=c.config.name,
            live=c.state is not ContainerState.EXITED,
        )
    return refs


def _hostname() -> str:
    return os.uname().nodename
