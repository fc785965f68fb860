"""Linux container resources, both ways (sandboxes, containers, updates)."""

from __future__ import annotations

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.errors import InvalidArgument
from agent.pods import model

__all__ = ["MIN_MEMORY_LIMIT", "resources_from_pb", "resources_to_pb"]


#: Below this a container cannot start at all (the same floor Docker enforces).
MIN_MEMORY_LIMIT = 6 << 20


def resources_from_pb(message: pb.LinuxContainerResources, field: str) -> model.Resources:
    r = message
    if r.cpu_period and not 1000 <= r.cpu_period <= 1_000_000:
        raise InvalidArgument(f"{field}.cpu_period: {r.cpu_period} is outside 1000..1000000 us")
    if r.cpu_quota < -1 or 0 < r.cpu_quota < 1000:
        raise InvalidArgument(f"{field}.cpu_quota: {r.cpu_quota} is not -1, 0 or >= 1000 us")
    if not 0 <= r.cpu_shares <= 262_144:
        raise InvalidArgument(f"{field}.cpu_shares: {r.cpu_shares} is outside 0..262144")
    if r.memory_limit_in_bytes < 0 or 0 < r.memory_limit_in_bytes < MIN_MEMORY_LIMIT:
        raise InvalidArgument(
            f"{field}.memory_limit_in_bytes: {r.memory_limit_in_bytes} is below the minimum "
            f"of {MIN_MEMORY_LIMIT} bytes (6 MiB)"
        )
    if r.memory_swap_limit_in_bytes < -1:
        raise InvalidArgument(f"{field}.memory_swap_limit_in_bytes: must be -1 or more")
    if not -1000 <= r.oom_score_adj <= 1000:
        raise InvalidArgument(f"{field}.oom_score_adj: {r.oom_score_adj} is outside -1000..1000")
    for i, hp in enumerate(r.hugepage_limits):
        if not hp.page_size:
            raise InvalidArgument(f"{field}.hugepage_limits[{i}].page_size is required")
    return model.Resources(
        cpu_period=r.cpu_period,
        cpu_quota=r.cpu_quota,
        cpu_shares=r.cpu_shares,
        memory_limit_in_bytes=r.memory_limit_in_bytes,
        oom_score_adj=r.oom_score_adj,
        cpuset_cpus=r.cpuset_cpus,
        cpuset_mems=r.cpuset_mems,
        hugepage_limits=tuple(model.HugepageLimit(h.page_size, h.limit) for h in r.hugepage_limits),
        unified=dict(r.unified),
        memory_swap_limit_in_bytes=r.memory_swap_limit_in_bytes,
    )


def resources_to_pb(resources: model.Resources) -> pb.LinuxContainerResources:
    r = resources
    return pb.LinuxContainerResources(
        cpu_period=r.cpu_period,
        cpu_quota=r.cpu_quota,
        cpu_shares=r.cpu_shares,
        memory_limit_in_bytes=r.memory_limit_in_bytes,
        oom_score_adj=r.oom_score_adj,
        cpuset_cpus=r.cpuset_cpus,
        cpuset_mems=r.cpuset_mems,
        hugepage_limits=[
            pb.HugepageLimit(page_size=h.page_size, limit=h.limit) for h in r.hugepage_limits
        ],
        unified=r.unified,
        memory_swap_limit_in_bytes=r.memory_swap_limit_in_bytes,
    )
