"""Container events (``GetContainerEvents``) out."""

from __future__ import annotations

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.cri.convert.containers import container_status_to_pb
from agent.cri.convert.sandboxes import sandbox_status_to_pb
from agent.pods import ContainerEvent, EventKind

__all__ = ["event_to_pb"]


_EVENT_TYPES = {
    EventKind.CREATED: pb.CONTAINER_CREATED_EVENT,
    EventKind.STARTED: pb.CONTAINER_STARTED_EVENT,
    EventKind.STOPPED: pb.CONTAINER_STOPPED_EVENT,
    EventKind.DELETED: pb.CONTAINER_DELETED_EVENT,
}


def event_to_pb(event: ContainerEvent) -> pb.ContainerEventResponse:
    response = pb.ContainerEventResponse(
        container_id=event.container_id,
        container_event_type=_EVENT_TYPES[event.kind],
        created_at=event.created_at,
        containers_statuses=[container_status_to_pb(c) for c in event.containers],
    )
    if event.sandbox is not None:
        response.pod_sandbox_status.CopyFrom(sandbox_status_to_pb(event.sandbox))
    return response
