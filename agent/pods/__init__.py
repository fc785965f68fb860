"""Pods and containers: sandbox and container lifecycles, OCI specs, state.

Knows neither protobuf (``cri.convert`` translates) nor runtime command lines
(``oci`` builds them). ``PodService`` (``service``) is the facade the CRI
layer calls; below it ``sandboxes`` and ``containers`` run the lifecycles,
``exits`` records exits, ``recovery`` reconciles after a restart, ``store``
persists records, ``spec`` builds OCI specs.
"""

from agent.pods import model
from agent.pods.cgroups import CgroupReading
from agent.pods.containers import AttachTarget, ExecOutput
from agent.pods.events import ContainerEvent, EventKind, SubscriberTooSlow
from agent.pods.selection import Selector
from agent.pods.service import PodService
from agent.pods.state import ContainerRecord, ContainerState, SandboxRecord, SandboxState
from agent.pods.stats import ContainerUsage, PodUsage

__all__ = [
    "AttachTarget",
    "CgroupReading",
    "ContainerEvent",
    "ContainerRecord",
    "ContainerState",
    "ContainerUsage",
    "EventKind",
    "ExecOutput",
    "PodService",
    "PodUsage",
    "SandboxRecord",
    "SandboxState",
    "Selector",
    "SubscriberTooSlow",
    "model",
]
