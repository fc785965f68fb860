"""GPU health: one small state object every kubelet path and the metrics read.

``GpuHealth`` holds, per physical GPU (a MIG device shares its parent's), whether it is
healthy and why not. Driver events (``record``) and periodic NVML answers (``observe``)
change it, under the policy of ``[gpu.health]``:

- an XID marks the GPU unhealthy unless it is an application XID (``ignored_xids``:
  13, 31, 43, 45, 68, 109 by default); a double-bit (uncorrectable) ECC error does too,
  a single-bit (corrected) one is only logged; a GPU lost from the bus (the event, or
  NVML reporting it ``lost``) and a GPU NVML cannot read are unhealthy; a failed event
  wait (an event with no UUID) marks every GPU;
- a GPU becomes healthy again, without a restart, once ``recovery_seconds`` passed with
  no critical event and NVML answers for it — except after an XID in ``reset_xids``
  (48, 79, 95, … by default), an uncorrectable ECC error or a loss from the bus: those
  wait until a reset is seen, i.e. NVML stopped answering for the GPU (or it left the
  inventory) and answers again, or the energy counter, which only a driver reload
  lowers, went down (``observe``'s ``samples``): a reload quicker than one reading.
  The volatile ECC totals are not used: ``nvidia-smi -p 0`` clears them on a GPU that
  was never reset. GPUs waiting for a
  reset are kept in a small file in the state dir, which a reboot clears, so an agent
  restart is not mistaken for a reset.

Changes are logged (one line each way) and counted in ``version``; consumers on the
event loop ``await wait_changed(version)``, others read ``devices()``. Thread-safe.
Imports only ``gpu.backend``, ``config``, ``_util``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from agent._util.fs import atomic_write_json
from agent.config import GpuHealthSection
from agent.gpu.backend import STATE_LOST, STATE_OK, GpuEvent, GpuInfo, GpuSample

__all__ = [
    "REASON_ECC",
    "REASON_EVENTS",
    "REASON_LOST",
    "REASON_NVML",
    "REASON_XID",
    "DeviceHealth",
    "GpuHealth",
]

log = logging.getLogger(__name__)

REASON_XID = "xid"
REASON_ECC = "ecc"
REASON_LOST = "gpu-lost"
REASON_NVML = "nvml-error"
REASON_EVENTS = "event-wait-failed"


@dataclass(frozen=True, slots=True)
class DeviceHealth:
    """One GPU's health as the kubelet paths and the metrics report it."""

    uuid: str
    index: int
    healthy: bool = True
    reason: str = ""  # one of the REASON_* when unhealthy
    xid: int = 0  # the last critical XID (0: none)
    message: str = ""
    since: float = 0.0  # time.time() of the last change
    needs_reset: bool = False


@dataclass(slots=True)
class _State:
    health: DeviceHealth
    last_critical: float | None = None  # monotonic
    answering: bool = True
    down_since_reset_needed: bool = False
    counters: dict[str, float] = field(default_factory=dict)  # of the last sample


#: GpuSample fields that only grow until a driver reload clears them.
_RESET_COUNTERS = ("energy_joules",)


@dataclass(slots=True)
class _Waiter:
    loop: asyncio.AbstractEventLoop
    event: asyncio.Event = field(default_factory=asyncio.Event)


class GpuHealth:
    def __init__(
        self,
        policy: GpuHealthSection,
        *,
        state_file: str = "",
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._policy = policy
        self._ignored = frozenset(policy.ignored_xids)
        self._reset = frozenset(policy.reset_xids)
        self._state_file = state_file
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._gpus: dict[str, _State] = {}
        self._waiters: list[_Waiter] = []
        self._listeners: list[Callable[[], None]] = []
        self.version = 0
        self._persisted = self._load()

    # -- reading --------------------------------------------------------

    def devices(self) -> dict[str, DeviceHealth]:
        """Every known GPU's health, by GPU UUID."""
        with self._lock:
            return {uuid: s.health for uuid, s in self._gpus.items()}

    def of(self, gpu_uuid: str) -> DeviceHealth | None:
        with self._lock:
            state = self._gpus.get(gpu_uuid)
            return state.health if state else None

    def is_healthy(self, gpu_uuid: str) -> bool:
        """An unknown GPU counts as healthy (the inventory decides whether it exists)."""
        health = self.of(gpu_uuid)
        return health is None or health.healthy

    async def wait_changed(self, version: int, timeout: float | None = None) -> int:
        """The version once it differs from ``version`` (or at ``timeout``)."""
        waiter = _Waiter(asyncio.get_running_loop())
        with self._lock:
            if self.version != version:
                return self.version
            self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter.event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return self.version

    def add_listener(self, callback: Callable[[], None]) -> None:
        """``callback()`` after every change, in the thread that made it."""
        with self._lock:
            self._listeners.append(callback)

    # -- changing -------------------------------------------------------

    def observe(self, gpus: Iterable[GpuInfo], samples: Iterable[GpuSample] = ()) -> None:
        """An NVML reading of every GPU: who answers, resets seen, recoveries due.

        ``samples`` (``GpuBackend.samples()``), when given, show a reset NVML answered
        through: a counter in ``_RESET_COUNTERS`` went down."""
        now = self._clock()
        changed = []
        by_uuid = {s.uuid: s for s in samples if not s.parent_uuid and s.state == STATE_OK}
        with self._lock:
            seen = set()
            for gpu in gpus:
                if not gpu.uuid:
                    continue
                seen.add(gpu.uuid)
                state = self._gpus.get(gpu.uuid)
                if state is None:
                    state = self._gpus[gpu.uuid] = self._new_state(gpu)
                    if not state.health.healthy:
                        changed.append(state.health)
                dropped = self._counters_dropped(state, by_uuid.get(gpu.uuid))
                changed += self._observe_one(state, gpu, now, counter_reset=dropped)
            for uuid, state in self._gpus.items():
                if uuid not in seen:  # left NVML's list: as good as lost
                    changed += self._observe_one(
                        state, GpuInfo(state.health.index, uuid, state=STATE_LOST), now
                    )
        self._changed(changed)

    def record(self, event: GpuEvent) -> None:
        """One driver event (from the event thread)."""
        if event.kind == "ecc_single":
            log.info("GPU %s: corrected (single-bit) ECC error; not a health problem", event.uuid)
            return
        if event.kind == "xid" and event.xid in self._ignored:
            log.info("GPU %s: XID %d (application error; ignored)", event.uuid, event.xid)
            return
        reason, needs_reset, message = self._classify(event)
        now = self._clock()
        changed = []
        with self._lock:
            targets = [self._gpus[event.uuid]] if event.uuid in self._gpus else []
            if not event.uuid:
                targets = list(self._gpus.values())
            elif not targets:
                log.warning("GPU event for unknown GPU %s: %s", event.uuid, message)
            for state in targets:
                state.last_critical = now
                old = state.health
                xid = event.xid if event.kind == "xid" else old.xid
                state.health = replace(
                    old,
                    healthy=False,
                    reason=reason,
                    xid=xid,
                    message=message,
                    since=old.since if not old.healthy and old.reason == reason else self._wall(),
                    needs_reset=old.needs_reset or needs_reset,
                )
                if state.health != old:
                    changed.append(state.health)
        self._changed(changed, announce=True)

    # -- internals ------------------------------------------------------

    def _new_state(self, gpu: GpuInfo) -> _State:
        health = DeviceHealth(gpu.uuid, gpu.index, since=self._wall())
        reason = self._persisted.get(gpu.uuid)
        state = _State(health)
        if reason:
            state.health = replace(
                health,
                healthy=False,
                reason=str(reason.get("reason", REASON_XID)),
                xid=int(str(reason.get("xid", 0))),
                message=str(reason.get("message", "")) + " (before the agent restarted)",
                needs_reset=True,
            )
            state.last_critical = self._clock()
        return state

    @staticmethod
    def _counters_dropped(state: _State, sample: GpuSample | None) -> bool:
        """Whether a reset counter went down since the last sample (and remember these)."""
        if sample is None:
            return False
        counters = {
            key: float(value)
            for key in _RESET_COUNTERS
            if (value := getattr(sample, key)) is not None
        }
        dropped = any(value < state.counters.get(key, value) for key, value in counters.items())
        state.counters = counters
        return dropped

    def _observe_one(
        self, state: _State, gpu: GpuInfo, now: float, *, counter_reset: bool = False
    ) -> list[DeviceHealth]:
        old = state.health
        answering = gpu.state == STATE_OK and not _identity_error(gpu)
        if not answering:
            state.answering = False
            lost = gpu.state == STATE_LOST
            reason = REASON_LOST if lost else REASON_NVML
            if old.healthy or (old.reason != reason and not old.needs_reset):
                state.last_critical = now
                state.health = replace(
                    old,
                    healthy=False,
                    reason=reason,
                    message=gpu.error or f"NVML reports the GPU {gpu.state}",
                    since=self._wall(),
                    needs_reset=old.needs_reset or lost,
                )
            else:
                state.last_critical = now
            if state.health.needs_reset:
                state.down_since_reset_needed = True  # down while waiting for a reset
            return [state.health] if state.health != old else []
        reset_seen = not state.answering and state.down_since_reset_needed
        state.answering = True
        if reset_seen:
            state.down_since_reset_needed = False
            state.health = replace(old, needs_reset=False)
            log.info("GPU %d (%s): answering again after a reset", gpu.index, gpu.uuid)
        elif counter_reset and old.needs_reset:
            state.down_since_reset_needed = False
            state.health = replace(old, needs_reset=False)
            log.info("GPU %d (%s): its reset counters dropped: reset", gpu.index, gpu.uuid)
        health = state.health
        quiet = self._policy.recovery_seconds
        if (
            not health.healthy
            and not health.needs_reset
            and quiet > 0
            and (state.last_critical is None or now - state.last_critical >= quiet)
        ):
            state.health = replace(
                health, healthy=True, reason="", message="", since=self._wall(), needs_reset=False
            )
        return [state.health] if state.health != old else []

    def _classify(self, event: GpuEvent) -> tuple[str, bool, str]:
        if event.kind == "xid":
            reset = event.xid in self._reset
            text = f"XID {event.xid}" + (" (needs a GPU reset)" if reset else "")
            return REASON_XID, reset, f"{text}: {event.message}" if event.message else text
        if event.kind == "ecc_double":
            return REASON_ECC, True, "uncorrectable (double-bit) ECC error"
        if event.kind == "gpu_lost":
            return REASON_LOST, True, event.message or "GPU fell off the bus"
        return REASON_EVENTS, False, event.message or "waiting for GPU events failed"

    def _changed(self, changed: list[DeviceHealth], *, announce: bool = False) -> None:
        if not changed:
            return
        for health in changed:
            if health.healthy:
                log.warning("GPU %d (%s) is healthy again", health.index, health.uuid)
            else:
                log.warning(
                    "GPU %d (%s) is unhealthy: %s (%s)%s",
                    health.index,
                    health.uuid,
                    health.message,
                    health.reason,
                    "; it stays unhealthy until a reset" if health.needs_reset else "",
                )
        with self._lock:
            self.version += 1
            waiters, self._waiters = self._waiters, []
            listeners = list(self._listeners)
            needing_reset = {
                u: {"reason": s.health.reason, "xid": s.health.xid, "message": s.health.message}
                for u, s in self._gpus.items()
                if s.health.needs_reset
            }
        for waiter in waiters:
            waiter.loop.call_soon_threadsafe(waiter.event.set)
        for callback in listeners:
            try:
                callback()
            except Exception:
                log.exception("GPU health listener failed")
        self._save(needing_reset)

    def _load(self) -> dict[str, dict[str, object]]:
        if not self._state_file:
            return {}
        try:
            with open(self._state_file) as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("GPU health: ignoring %s: %s", self._state_file, exc)
            return {}
        return {str(k): v for k, v in data.items() if isinstance(v, dict)}

    def _save(self, needing_reset: dict[str, dict[str, object]]) -> None:
        if not self._state_file or needing_reset == self._persisted:
            return
        self._persisted = needing_reset
        try:
            if needing_reset:
                atomic_write_json(self._state_file, needing_reset, mode=0o600)
            elif os.path.exists(self._state_file):
                os.unlink(self._state_file)
        except OSError as exc:
            log.warning("GPU health: cannot write %s: %s", self._state_file, exc)


def _identity_error(gpu: GpuInfo) -> bool:
    """Whether NVML could not read even the GPU's identity (its UUID)."""
    return not gpu.uuid
