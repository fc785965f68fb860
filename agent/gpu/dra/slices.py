"""ResourceSlice publication: this node's pool, kept equal to what the driver offers.

One pool per node, named after the node, in as many slices as it needs (at most 64
devices each, the limit once devices carry taints), named
``<node>-<driver>-<n>``. ``set_devices`` gives the wanted devices; ``run`` writes them
whenever they change, when the kubelet registers the driver again, and every
``RESYNC_SECONDS`` (someone may have deleted or edited them). A write that changes the
pool bumps ``spec.pool.generation`` on all its slices, so the scheduler never mixes two
versions. The slices are read first and left alone when they already say what is
wanted; an update carries the ``resourceVersion`` read, so a concurrent change is a
409 Conflict, after which the slices are read again. A failure is retried with
exponential backoff (0.5 s doubling to ``retry_max``) — an API server that is away
never stops the agent. ``delete`` removes the node's slices (on stop, when so
configured). An API server without the ``DRADeviceTaints`` feature drops ``taints``
from the devices it stores; once a write comes back without the taints sent, the
publisher leaves tainted (unhealthy) devices out of the pool instead, so they are not
scheduled and the pool stops differing from what is stored. Imports only ``gpu.dra``
modules.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from agent.gpu.dra.kube import ApiError, ResourceApi

__all__ = ["MAX_DEVICES_PER_SLICE", "RESYNC_SECONDS", "SlicePublisher", "slice_name"]

log = logging.getLogger(__name__)

MAX_DEVICES_PER_SLICE = 64
RESYNC_SECONDS = 300.0
API_VERSION = "resource.k8s.io/v1"
RETRY_INITIAL = 0.5


def slice_name(node: str, driver: str, index: int) -> str:
    name = f"{node}-{driver}-{index}"
    if len(name) <= 253:
        return name
    digest = hashlib.sha256(f"{node}/{driver}".encode()).hexdigest()[:16]
    return f"{node[:200]}-{digest}-{index}"


def _chunks(devices: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [
        devices[i : i + MAX_DEVICES_PER_SLICE]
        for i in range(0, len(devices), MAX_DEVICES_PER_SLICE)
    ] or [[]]


class SlicePublisher:
    def __init__(
        self,
        api: Callable[[], ResourceApi],
        *,
        driver: str,
        node: str,
        retry_max: float,
    ) -> None:
        self._api = api
        self.driver = driver
        self.node = node
        self._retry_max = retry_max
        self._lock = threading.Lock()
        self._devices: list[dict[str, Any]] | None = None
        self._wake = asyncio.Event()
        self.generation = 0  # of the pool as last written or found
        self.synced = asyncio.Event()  # set after each sync that left the pool as wanted
        self.last_error = ""
        self.writes = 0
        #: False once the API server was seen dropping device taints (until a restart).
        self.taints_supported = True

    # -- what to publish ------------------------------------------------

    def set_devices(self, devices: list[dict[str, Any]]) -> None:
        """The devices the pool must hold (JSON form); published soon after."""
        with self._lock:
            if devices == self._devices:
                return
            self._devices = [dict(d) for d in devices]
        self.synced.clear()
        self._wake.set()

    def resync(self) -> None:
        """Check the slices again now (the kubelet re-registered the driver, say)."""
        self._wake.set()

    # -- the loop -------------------------------------------------------

    async def run(self) -> None:
        delay = 0.0
        while True:
            try:
                timeout = delay or RESYNC_SECONDS
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
            self._wake.clear()
            with self._lock:
                devices = self._devices
            if devices is None:
                continue
            try:
                await asyncio.to_thread(self._sync, devices)
            except ApiError as exc:
                delay = min(self._retry_max, delay * 2) if delay else RETRY_INITIAL
                if exc.status == 409:
                    delay = RETRY_INITIAL  # someone else wrote: read again soon
                level = logging.WARNING if exc.status != 409 else logging.INFO
                if str(exc) == self.last_error:
                    level = logging.DEBUG
                log.log(level, "ResourceSlices of %s: %s (retry in %.1fs)", self.node, exc, delay)
                self.last_error = str(exc)
                continue
            except Exception as exc:
                delay = min(self._retry_max, delay * 2) if delay else RETRY_INITIAL
                log.exception("ResourceSlices of %s failed (retry in %.1fs)", self.node, delay)
                self.last_error = str(exc)
                continue
            delay = 0.0
            self.last_error = ""
            with self._lock:
                if self._devices == devices:
                    self.synced.set()

    def _published(self, devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The devices to write: tainted ones left out where taints would be dropped."""
        if self.taints_supported:
            return devices
        return [d for d in devices if not d.get("taints")]

    def _check_taints(self, sent: list[dict[str, Any]], stored: dict[str, Any]) -> bool:
        """Whether the API server kept the taints sent; logs once when it did not."""
        kept = {d.get("name"): d.get("taints") for d in stored.get("spec", {}).get("devices") or []}
        if all(kept.get(d["name"]) for d in sent if d.get("taints")):
            return True
        self.taints_supported = False
        log.warning(
            "ResourceSlices of %s: the API server drops device taints (feature gate "
            "DRADeviceTaints off); unhealthy devices are left out of the pool instead",
            self.node,
        )
        return False

    def _sync(self, devices: list[dict[str, Any]]) -> None:
        devices = self._published(devices)
        api = self._api()
        existing = {s["metadata"]["name"]: s for s in api.list_slices(self.node, self.driver)}
        chunks = _chunks(devices)
        names = [slice_name(self.node, self.driver, i) for i in range(len(chunks))]
        generations = [
            int(s.get("spec", {}).get("pool", {}).get("generation", 0)) for s in existing.values()
        ]
        if self._up_to_date(existing, names, chunks, generations):
            self.generation = generations[0]
            return
        generation = max([self.generation, *generations]) + 1
        taints_kept = True
        for name, chunk in zip(names, chunks, strict=True):
            body = self._body(name, chunk, generation, len(chunks))
            old = existing.get(name)
            if old is None:
                stored = api.create_slice(body)
            else:
                body["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
                stored = api.replace_slice(name, body)
            if self.taints_supported and not self._check_taints(chunk, stored):
                taints_kept = False
        for name, old in existing.items():
            if name not in names:
                api.delete_slice(name, old["metadata"].get("resourceVersion", ""))
        self.generation = generation
        self.writes += 1
        log.info(
            "ResourceSlices of %s: pool generation %d, %d devices in %d slices",
            self.node,
            generation,
            len(devices),
            len(chunks),
        )
        if not taints_kept:  # what was just written offers unhealthy devices: write again
            self._sync(devices)

    @staticmethod
    def _up_to_date(
        existing: dict[str, dict[str, Any]],
        names: list[str],
        chunks: list[list[dict[str, Any]]],
        generations: list[int],
    ) -> bool:
        if sorted(existing) != sorted(names) or len(set(generations)) != 1:
            return False
        for name, chunk in zip(names, chunks, strict=True):
            spec = existing[name].get("spec", {})
            if (spec.get("devices") or []) != chunk:
                return False
            if spec.get("pool", {}).get("resourceSliceCount") != len(chunks):
                return False
        return True

    def _body(
        self, name: str, devices: list[dict[str, Any]], generation: int, count: int
    ) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": "ResourceSlice",
            "metadata": {"name": name},
            "spec": {
                "driver": self.driver,
                "nodeName": self.node,
                "pool": {"name": self.node, "generation": generation, "resourceSliceCount": count},
                "devices": devices,
            },
        }

    def wanted(self, generation: int = 1) -> list[dict[str, Any]]:
        """The slices as they would be written now (for validation and ``Status``)."""
        with self._lock:
            devices = self._published(list(self._devices or []))
        chunks = _chunks(devices)
        return [
            self._body(slice_name(self.node, self.driver, i), chunk, generation, len(chunks))
            for i, chunk in enumerate(chunks)
        ]

    def delete(self) -> int:
        """Delete every slice of this node and driver (blocking); how many there were."""
        api = self._api()
        slices = api.list_slices(self.node, self.driver)
        for item in slices:
            api.delete_slice(item["metadata"]["name"])
        if slices:
            log.info("ResourceSlices of %s: deleted %d", self.node, len(slices))
        return len(slices)
