"""GpuHealth: which events mark a GPU unhealthy, when it recovers, and what needs a reset.

A fake clock drives the quiet period; GPU readings are GpuInfo values as the
backends return them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os

from agent.config import GpuHealthSection
from agent.gpu.backend import STATE_ERROR, STATE_LOST, GpuEvent, GpuInfo
from agent.gpu.health import REASON_ECC, REASON_EVENTS, REASON_LOST, REASON_XID, GpuHealth

GPU0 = GpuInfo(0, "GPU-0000", minor=0)
GPU1 = GpuInfo(1, "GPU-1111", minor=1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(recovery: float = 60.0, state_file: str = "", **policy: object) -> tuple[GpuHealth, Clock]:
    clock = Clock()
    section = GpuHealthSection(recovery_seconds=recovery, **policy)  # type: ignore[arg-type]
    health = GpuHealth(section, state_file=state_file, clock=clock)
    health.observe([GPU0, GPU1])
    return health, clock


def test_every_gpu_starts_healthy():
    health, _ = make()
    assert {u: h.healthy for u, h in health.devices().items()} == {
        "GPU-0000": True,
        "GPU-1111": True,
    }
    assert health.is_healthy("GPU-unknown")


def test_application_xids_and_corrected_ecc_change_nothing():
    health, _ = make()
    version = health.version
    for xid in (13, 31, 43, 45, 68, 109):
        health.record(GpuEvent("xid", GPU1.uuid, xid=xid))
    health.record(GpuEvent("ecc_single", GPU1.uuid))
    assert health.is_healthy(GPU1.uuid) and health.version == version


def test_a_critical_xid_recovers_after_the_quiet_period_while_nvml_answers():
    health, clock = make(recovery=60)
    health.record(GpuEvent("xid", GPU1.uuid, xid=63, message="row remap"))
    sick = health.of(GPU1.uuid)
    assert sick is not None and not sick.healthy
    assert (sick.reason, sick.xid, sick.needs_reset) == (REASON_XID, 63, False)
    assert "XID 63" in sick.message and health.is_healthy(GPU0.uuid)
    clock.now += 59
    health.observe([GPU0, GPU1])
    assert not health.is_healthy(GPU1.uuid)
    clock.now += 2
    health.observe([GPU0, GPU1])
    assert health.is_healthy(GPU1.uuid)
    back = health.of(GPU1.uuid)
    assert back is not None and back.reason == "" and back.xid == 63  # the last XID stays known


def test_a_new_critical_xid_restarts_the_quiet_period():
    health, clock = make(recovery=60)
    health.record(GpuEvent("xid", GPU1.uuid, xid=63))
    clock.now += 50
    health.record(GpuEvent("xid", GPU1.uuid, xid=94))
    clock.now += 50
    health.observe([GPU0, GPU1])
    assert not health.is_healthy(GPU1.uuid)
    clock.now += 11
    health.observe([GPU0, GPU1])
    assert health.is_healthy(GPU1.uuid)


def test_no_recovery_while_nvml_does_not_answer():
    health, clock = make(recovery=60)
    health.record(GpuEvent("xid", GPU1.uuid, xid=63))
    clock.now += 100
    broken = dataclasses.replace(GPU1, state=STATE_ERROR, error="Unknown Error")
    health.observe([GPU0, broken])
    assert not health.is_healthy(GPU1.uuid)
    clock.now += 30
    health.observe([GPU0, GPU1])  # answers again, but the quiet period restarted
    assert not health.is_healthy(GPU1.uuid)
    clock.now += 31
    health.observe([GPU0, GPU1])
    assert health.is_healthy(GPU1.uuid)


def test_reset_xids_wait_for_a_reset():
    health, clock = make(recovery=10)
    health.record(GpuEvent("xid", GPU1.uuid, xid=79, message="fallen off the bus"))
    sick = health.of(GPU1.uuid)
    assert sick is not None and sick.needs_reset and "needs a GPU reset" in sick.message
    clock.now += 3600
    health.observe([GPU0, GPU1])  # quiet for an hour, NVML answers: still no reset seen
    assert not health.is_healthy(GPU1.uuid)
    health.observe([GPU0, dataclasses.replace(GPU1, state=STATE_LOST)])  # the reset
    clock.now += 1
    health.observe([GPU0, GPU1])
    assert not health.is_healthy(GPU1.uuid)  # answering again, quiet period from the reset
    clock.now += 10
    health.observe([GPU0, GPU1])
    assert health.is_healthy(GPU1.uuid)


def test_a_gpu_gone_from_nvmls_list_is_lost_and_comes_back_after_a_reset():
    health, clock = make(recovery=5)
    health.observe([GPU0])
    lost = health.of(GPU1.uuid)
    assert lost is not None and (lost.healthy, lost.reason, lost.needs_reset) == (
        False,
        REASON_LOST,
        True,
    )
    clock.now += 10
    health.observe([GPU0, GPU1])
    clock.now += 6
    health.observe([GPU0, GPU1])
    assert health.is_healthy(GPU1.uuid)


def test_uncorrectable_ecc_and_lost_events_need_a_reset_too():
    health, _ = make()
    health.record(GpuEvent("ecc_double", GPU0.uuid))
    health.record(GpuEvent("gpu_lost", GPU1.uuid))
    zero, one = health.of(GPU0.uuid), health.of(GPU1.uuid)
    assert zero is not None and (zero.reason, zero.needs_reset) == (REASON_ECC, True)
    assert one is not None and (one.reason, one.needs_reset) == (REASON_LOST, True)


def test_a_failed_event_wait_marks_every_gpu_and_recovers():
    health, clock = make(recovery=5)
    health.record(GpuEvent("error", message="nvmlEventSetWait: Unknown Error"))
    assert all(not h.healthy and h.reason == REASON_EVENTS for h in health.devices().values())
    clock.now += 6
    health.observe([GPU0, GPU1])
    assert all(h.healthy for h in health.devices().values())


def test_the_configured_xid_lists_are_used():
    health, _ = make(recovery=5, ignored_xids=[63], reset_xids=[31])
    health.record(GpuEvent("xid", GPU0.uuid, xid=63))
    assert health.is_healthy(GPU0.uuid)
    health.record(GpuEvent("xid", GPU0.uuid, xid=31))
    sick = health.of(GPU0.uuid)
    assert sick is not None and sick.needs_reset


def test_recovery_zero_never_recovers_without_a_restart():
    health, clock = make(recovery=0)
    health.record(GpuEvent("xid", GPU0.uuid, xid=63))
    clock.now += 10**6
    health.observe([GPU0, GPU1])
    assert not health.is_healthy(GPU0.uuid)


def test_gpus_waiting_for_a_reset_survive_an_agent_restart(tmp_path):
    path = str(tmp_path / "gpu-health.json")
    health, _ = make(state_file=path)
    health.record(GpuEvent("xid", GPU1.uuid, xid=48))
    with open(path) as f:
        assert json.load(f)[GPU1.uuid]["xid"] == 48
    again, _ = make(state_file=path)
    restored = again.of(GPU1.uuid)
    assert restored is not None and not restored.healthy and restored.needs_reset
    assert again.is_healthy(GPU0.uuid)
    again.observe([GPU0])  # reset (it left the list)...
    again.observe([GPU0, GPU1])
    assert not os.path.exists(path)  # nothing waits for a reset any more


async def test_waiters_on_the_event_loop_are_woken_from_other_threads():
    health, _ = make()
    version = health.version
    waiter = asyncio.create_task(health.wait_changed(version, timeout=5))
    await asyncio.sleep(0)
    await asyncio.to_thread(health.record, GpuEvent("xid", GPU0.uuid, xid=63))
    assert await waiter == version + 1
    assert await health.wait_changed(version + 1, timeout=0.05) == version + 1  # timed out
