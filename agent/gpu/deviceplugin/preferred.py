"""``GetPreferredAllocation``: which of the available devices one container should get.

Whole devices are packed: the chosen set spans as few NUMA nodes as possible, then has
as many NVLink pairs inside it as possible, then leaves the fewest free devices behind
on the NUMA nodes it touches (best fit, so a later large request still finds a whole
node free), then has the lowest GPU indices. Every combination is scored when there
are at most ``MAX_COMBINATIONS``, else the set is grown greedily by the same rules.
Time-slicing replicas (``<UUID>::<r>``) are spread instead: each next replica comes
from a GPU not chosen yet, the one with the most free replicas (the least shared),
before any GPU is used twice. ``must_include`` devices are always in the answer.
Pure functions; imports nothing of the agent.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["MAX_COMBINATIONS", "Placement", "preferred_allocation"]

MAX_COMBINATIONS = 20000


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a device id sits: its physical GPU, index, NUMA node and NVLink peers."""

    gpu_uuid: str
    index: int
    numa_node: int | None = None
    nvlink_peers: frozenset[str] = frozenset()


def preferred_allocation(
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
    placements: Mapping[str, Placement],
    *,
    replicas: bool = False,
) -> list[str]:
    must = [d for d in dict.fromkeys(must_include) if d in placements]
    pool = [d for d in dict.fromkeys(available) if d in placements and d not in must]
    need = size - len(must)
    if need <= 0:
        return must[:size] if size > 0 else must
    if need >= len(pool):
        return must + sorted(pool, key=lambda d: _order(d, placements))
    if replicas:
        return must + _spread(must, pool, need, placements)
    return must + _pack(must, pool, need, placements)


def _order(device: str, placements: Mapping[str, Placement]) -> tuple[int, str]:
    return (placements[device].index, device)


def _spread(
    must: list[str], pool: list[str], need: int, placements: Mapping[str, Placement]
) -> list[str]:
    free = Counter(placements[d].gpu_uuid for d in pool)
    used = Counter(placements[d].gpu_uuid for d in must)
    chosen: list[str] = []
    left = sorted(pool, key=lambda d: _order(d, placements))
    for _ in range(need):
        best = min(
            left,
            key=lambda d: (
                used[placements[d].gpu_uuid],
                -free[placements[d].gpu_uuid],
                _order(d, placements),
            ),
        )
        left.remove(best)
        gpu = placements[best].gpu_uuid
        used[gpu] += 1
        free[gpu] -= 1
        chosen.append(best)
    return chosen


def _score(
    chosen: Sequence[str], pool_by_numa: Counter[int | None], placements: Mapping[str, Placement]
) -> tuple[int, int, int, tuple[int, ...]]:
    numas = Counter(placements[d].numa_node for d in chosen)
    gpus = {placements[d].gpu_uuid for d in chosen}
    links = sum(
        1
        for a, b in itertools.combinations(sorted(gpus), 2)
        if b in _peers(a, chosen, placements) or a in _peers(b, chosen, placements)
    )
    leftover = sum(pool_by_numa[n] - numas[n] for n in numas)
    return (len(numas), -links, leftover, tuple(sorted(placements[d].index for d in chosen)))


def _peers(gpu: str, chosen: Sequence[str], placements: Mapping[str, Placement]) -> frozenset[str]:
    for device in chosen:
        if placements[device].gpu_uuid == gpu:
            return placements[device].nvlink_peers
    return frozenset()


def _pack(
    must: list[str], pool: list[str], need: int, placements: Mapping[str, Placement]
) -> list[str]:
    everything = must + pool
    pool_by_numa = Counter(placements[d].numa_node for d in everything)
    if math.comb(len(pool), need) <= MAX_COMBINATIONS:
        best = min(
            itertools.combinations(pool, need),
            key=lambda combo: _score(must + list(combo), pool_by_numa, placements),
        )
        return sorted(best, key=lambda d: _order(d, placements))
    chosen: list[str] = []
    left = list(pool)
    for _ in range(need):
        pick = min(left, key=lambda d: _score(must + chosen + [d], pool_by_numa, placements))
        left.remove(pick)
        chosen.append(pick)
    return sorted(chosen, key=lambda d: _order(d, placements))
