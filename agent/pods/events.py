"""Container lifecycle events for ``GetContainerEvents`` (the kubelet's evented PLEG).

Each change (created, started, stopped, deleted; of a container or of a pod's
sandbox) is published with a snapshot of the pod and its containers, taken
when it happened. Every subscriber has its own bounded queue: publishing
never waits, and a subscriber that falls that far behind is disconnected
(the kubelet then relists) rather than slowing the runtime down.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from agent.pods.state import ContainerRecord, SandboxRecord

__all__ = ["ContainerEvent", "EventBroker", "EventKind", "SubscriberTooSlow"]

log = logging.getLogger(__name__)

#: Events a subscriber may have pending before it is dropped.
QUEUE_SIZE = 1024


class EventKind(enum.StrEnum):
    CREATED = "created"
    STARTED = "started"
    STOPPED = "stopped"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class ContainerEvent:
    container_id: str  # a container's id, or the sandbox's for sandbox events
    kind: EventKind
    created_at: int  # ns
    sandbox: SandboxRecord | None
    containers: tuple[ContainerRecord, ...]


class SubscriberTooSlow(Exception):
    """The subscriber's queue overflowed; its stream ends."""


_OVERFLOW = object()


class EventBroker:
    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[object]] = set()

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    def publish(self, event: ContainerEvent) -> None:
        for queue in list(self._queues):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._queues.discard(queue)
                # Make room for the marker so the subscriber learns why it ends.
                queue.get_nowait()
                queue.put_nowait(_OVERFLOW)
                log.warning("dropping a container-event subscriber %d events behind", QUEUE_SIZE)

    async def subscribe(self) -> AsyncIterator[ContainerEvent]:
        queue: asyncio.Queue[object] = asyncio.Queue(QUEUE_SIZE)
        self._queues.add(queue)
        try:
            while True:
                item = await queue.get()
                if item is _OVERFLOW:
                    raise SubscriberTooSlow(f"event subscriber fell {QUEUE_SIZE} events behind")
                assert isinstance(item, ContainerEvent)
                yield item
        finally:
            self._queues.discard(queue)
