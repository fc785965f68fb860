"""Container exits: conmon's exit files become EXITED records, and waiters wake.

An exit can arrive at any moment: from the exit watcher (inotify on the exit
directory), from a status call that finds the file first, or while a stop
waits for it. Whoever sees it first records it, under the container's lock,
through :meth:`ExitTracker.apply` — the one place an exit file is read into
a record. A container whose monitor died has nobody to write that file:
:meth:`ExitTracker.check_monitor` notices and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from agent._util.locks import KeyedLock
from agent.errors import FailedPrecondition
from agent.oci import Runtime
from agent.pods.events import EventKind
from agent.pods.state import ContainerRecord, ContainerState, ExitReason, mark_exited
from agent.pods.store import PodStore

__all__ = ["ExitTracker", "process_alive"]

log = logging.getLogger(__name__)

#: What a container exited with when nobody saw how (its monitor is gone).
LOST_EXIT_CODE = 255
MONITOR_DIED = "exit code unknown: its monitor (conmon) died"


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class ExitTracker:
    def __init__(
        self,
        *,
        store: PodStore,
        runtimes: dict[str, Runtime],
        locks: KeyedLock,
        on_change: Callable[[EventKind, str], None],
    ) -> None:
        self._store = store
        self._runtimes = runtimes
        self._locks = locks
        self._on_change = on_change
        self._exited: dict[str, asyncio.Event] = {}
        #: when each container's monitor was last looked at (see ``check_monitor``)
        self._monitor_checked: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: containers whose exit was notified and is not recorded yet
        self._noticed: set[str] = set()
        #: True while the exit watcher runs and a list has just drained its queue
        #: (``ExitWatcher.drain``): every exit file present has been announced through
        #: :meth:`notice`, so a list need not look for each running container's file
        self.announced = False

    def runtime_of(self, record: ContainerRecord) -> Runtime:
        runtime = self._runtimes.get(record.handler)
        if runtime is None:
            raise FailedPrecondition(f"runtime handler '{record.handler}' is not available")
        return runtime

    def watch(self, container_id: str) -> None:
        """Start expecting exits of a new container (so a stop can wait for one)."""
        self._exited[container_id] = asyncio.Event()

    def forget(self, container_id: str) -> None:
        self._exited.pop(container_id, None)
        self._monitor_checked.pop(container_id, None)
        self._noticed.discard(container_id)

    def notice(self, container_id: str) -> None:
        """conmon wrote the exit file (from the exit watcher): record it under the lock."""
        record = self._store.get_container(container_id)
        if record is None or record.state.is_exited():
            return
        self._noticed.add(container_id)
        event = self._exited.get(container_id)
        if event is not None:
            event.set()  # wake a stop() waiting under the lock; it records the exit itself
        task = asyncio.get_running_loop().create_task(self._locked_apply(container_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _locked_apply(self, container_id: str) -> None:
        async with self._locks.hold(container_id):
            self.apply(container_id)

    def apply(self, container_id: str) -> bool:
        """Record the exit if conmon wrote it (whether it has ended); hold the lock."""
        record = self._store.get_container(container_id)
        if record is None or record.state.is_exited():
            self._noticed.discard(container_id)
            return record is not None
        status = self.runtime_of(record).exit_status(container_id)
        if status is None:
            return False
        self._noticed.discard(container_id)
        reason = ExitReason.of(status.code, oom_killed=status.oom_killed)
        self._store.update_container(
            container_id,
            lambda r: mark_exited(
                r,
                code=status.code,
                reason=reason,
                finished_at=status.finished_at,
                started_at=r.started_at or status.finished_at,
            ),
        )
        event = self._exited.get(container_id)
        if event is not None:
            event.set()
        log.info("container %s exited with %d (%s)", container_id, status.code, reason)
        self._on_change(EventKind.STOPPED, container_id)
        return True

    async def wait(self, record: ContainerRecord, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the exit to be recorded; whether it was."""
        event = self._exited.setdefault(record.id, asyncio.Event())
        deadline = time.monotonic() + timeout
        while True:
            if self.apply(record.id):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(remaining, 0.5))
            event.clear()

    def mark_lost(self, container_id: str, *, code: int, message: str) -> None:
        """Nobody will report this container's exit (its monitor is gone): record one."""
        self._store.update_container(
            container_id,
            lambda r: mark_exited(
                r,
                code=code,
                reason=ExitReason.ERROR,
                finished_at=time.time_ns(),
                message=message,
            ),
        )
        self._on_change(EventKind.STOPPED, container_id)

    def check_monitor(self, record: ContainerRecord, *, at_most_every: float = 0.0) -> None:
        """A running container whose conmon died: UNKNOWN while its process lives, else EXITED.

        ``at_most_every``: skip the check (two /proc reads) if it was made that recently;
        the kubelet lists every container every second.
        """
        if not record.state.is_running():
            return
        now = time.monotonic()
        if now - self._monitor_checked.get(record.id, -1e9) < at_most_every:
            return
        self._monitor_checked[record.id] = now
        runtime = self._runtimes.get(record.handler)
        if runtime is None or runtime.monitor_alive(record.id) is not False:
            return
        if self.apply(record.id):
            return  # it ended and conmon, its work done, with it
        log.warning("conmon of container %s died", record.id)
        if process_alive(record.pid):
            self._store.update_container(
                record.id,
                lambda r: replace(
                    r,
                    state=ContainerState.UNKNOWN,
                    message="its monitor (conmon) died; the process still runs",
                ),
            )
            self._on_change(EventKind.STOPPED, record.id)
        else:
            self.mark_lost(record.id, code=LOST_EXIT_CODE, message=MONITOR_DIED)

    def refresh(self, container_id: str, *, listing: bool = False) -> ContainerRecord:
        """The record, with an exit or a dead monitor noticed first (status, lists).

        A status call reads the container's exit file itself. A list (``listing``,
        many containers every second), once the exit watcher's queue is drained
        (``announced``), reads only the files it announced — as current, without a
        ``stat`` per running container — and checks each monitor at most once a
        second.
        """
        record = self._store.container(container_id)
        if not record.state.is_exited():
            look = not (listing and self.announced) or container_id in self._noticed
            if not (look and self.apply(record.id)):
                self.check_monitor(record, at_most_every=1.0 if listing else 0.0)
            record = self._store.container(record.id)
        return record

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
