"""Which sandboxes or containers a list request asks for: the CRI filters, in one place.

Every List/Stream/Stats RPC filters the same way (crictl and the kubelet
rely on it): an id *prefix*, a pod sandbox id prefix (containers), an exact
state, and a label selector where every key must match exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from agent.pods.state import ContainerRecord, ContainerState, SandboxRecord, SandboxState

__all__ = ["Selector", "select"]

R = TypeVar("R", SandboxRecord, ContainerRecord)


@dataclass(frozen=True, slots=True)
class Selector:
    """An empty selector selects everything."""

    id_prefix: str = ""
    sandbox_prefix: str = ""
    #: a sandbox state is compared as the CRI reports it (CREATING is NOTREADY)
    state: SandboxState | ContainerState | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    def matches(self, record: SandboxRecord | ContainerRecord) -> bool:
        if self.id_prefix and not record.id.startswith(self.id_prefix):
            return False
        if self.sandbox_prefix and not (
            isinstance(record, ContainerRecord)
            and record.sandbox_id.startswith(self.sandbox_prefix)
        ):
            return False
        if self.state is not None:
            state = record.state.reported() if isinstance(record, SandboxRecord) else record.state
            if state is not self.state:
                return False
        labels = record.config.labels
        return all(labels.get(k) == v for k, v in self.labels.items())


def select(records: Iterable[R], selector: Selector) -> list[R]:
    """The records ``selector`` matches, oldest first (the order crictl shows)."""
    return sorted((r for r in records if selector.matches(r)), key=lambda r: r.created_at)
