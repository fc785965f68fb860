"""GetPreferredAllocation's choice on a 2x4-GPU node: two NUMA nodes of four GPUs each,
NVLink between GPUs 0-1, 2-3, 4-5, 6-7 (pairs) — the layout of many 8-GPU servers."""

from __future__ import annotations

import pytest

from agent.gpu.deviceplugin.preferred import Placement, preferred_allocation

PAIRS = {0: 1, 1: 0, 2: 3, 3: 2, 4: 5, 5: 4, 6: 7, 7: 6}


def uuid(i: int) -> str:
    return f"GPU-{i}"


PLACEMENTS = {
    uuid(i): Placement(uuid(i), i, numa_node=i // 4, nvlink_peers=frozenset({uuid(PAIRS[i])}))
    for i in range(8)
}
ALL = [uuid(i) for i in range(8)]


def pick(available: list[str], size: int, must: list[str] | None = None) -> list[int]:
    chosen = preferred_allocation(available, must or [], size, PLACEMENTS)
    assert len(chosen) == size and len(set(chosen)) == size
    assert set(chosen) <= set(available)
    return sorted(PLACEMENTS[c].index for c in chosen)


def test_two_gpus_are_an_nvlink_pair_on_one_numa_node():
    assert pick(ALL, 2) == [0, 1]


def test_four_gpus_are_one_whole_numa_node():
    assert pick(ALL, 4) == [0, 1, 2, 3]


def test_best_fit_leaves_a_whole_numa_node_free():
    # GPUs 0 and 1 are taken: a pair should come from NUMA node 0 (2, 3), not break node 1.
    available = [uuid(i) for i in range(2, 8)]
    assert pick(available, 2) == [2, 3]
    # ...and a request of four still finds node 1 whole.
    assert pick(available, 4) == [4, 5, 6, 7]


def test_an_nvlink_pair_wins_over_lower_indices():
    # 0, 2, 3 free on node 0: the NVLink pair 2-3, not 0 and 2.
    available = [uuid(i) for i in (0, 2, 3, 5, 6, 7)]
    assert pick(available, 2) == [2, 3]


def test_must_include_is_kept_and_its_neighbourhood_preferred():
    assert pick(ALL, 2, must=[uuid(5)]) == [4, 5]
    assert pick(ALL, 4, must=[uuid(6)]) == [4, 5, 6, 7]


def test_more_than_one_numa_node_only_when_needed():
    chosen = pick(ALL, 6)
    assert chosen[:4] == [0, 1, 2, 3] or chosen[-4:] == [4, 5, 6, 7]
    assert pick(ALL, 8) == list(range(8))


def test_replicas_are_spread_over_the_least_shared_gpus():
    placements = {
        f"GPU-{g}::{r}": Placement(f"GPU-{g}", g, numa_node=0) for g in range(3) for r in range(4)
    }
    available = list(placements)
    available.remove("GPU-0::0")  # GPU 0 already shared once
    chosen = preferred_allocation(available, [], 2, placements, replicas=True)
    assert sorted(placements[c].gpu_uuid for c in chosen) == ["GPU-1", "GPU-2"]
    three = preferred_allocation(available, [], 3, placements, replicas=True)
    assert sorted(placements[c].gpu_uuid for c in three) == ["GPU-0", "GPU-1", "GPU-2"]


@pytest.mark.parametrize("size", [0, 1])
def test_small_requests(size):
    assert len(preferred_allocation(ALL, [], size, PLACEMENTS)) == size
