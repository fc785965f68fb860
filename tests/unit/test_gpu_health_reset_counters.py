"""A GPU reset quicker than one reading: NVML answers throughout, but the counters a reset
clears went down, so a GPU waiting for a reset may recover (the simulated NVML backend)."""

from __future__ import annotations

from agent.config import GpuHealthSection
from agent.gpu.backend import GpuEvent
from agent.gpu.health import GpuHealth
from agent.gpu.health_monitor import HealthMonitor
from agent.gpu.simulated import SimulatedBackend
from tests.unit.test_gpu_health import Clock

UUID = "GPU-22222222-2222-2222-2222-222222222222"


def simulated(tmp_path, ecc: list[int]) -> SimulatedBackend:
    """One GPU whose volatile uncorrected ECC total follows ``ecc``, one value a sample."""
    path = tmp_path / "sim.toml"
    path.write_text(
        f"""
driver_version = "550.54.15"
[[gpus]]
uuid = "{UUID}"
name = "NVIDIA H100 80GB HBM3"
[gpus.samples]
ecc_uncorrected_volatile = {ecc}
"""
    )
    backend = SimulatedBackend(str(path))
    backend.open()
    return backend


def poll(health: GpuHealth, backend: SimulatedBackend, clock: Clock) -> bool:
    """One health check a minute later; whether the GPU is healthy after it."""
    clock.now += 60
    health.observe(backend.gpus(), backend.samples())
    return health.is_healthy(UUID)


def test_a_drop_of_the_volatile_ecc_total_is_a_reset(tmp_path):
    backend = simulated(tmp_path, [0, 1, 1, 0, 0])
    clock = Clock()
    health = GpuHealth(GpuHealthSection(recovery_seconds=60), clock=clock)
    assert poll(health, backend, clock)
    health.record(GpuEvent("ecc_double", UUID))
    assert not poll(health, backend, clock)  # the error counted: 1
    assert not poll(health, backend, clock)  # still 1, NVML answers: no reset yet
    sick = health.of(UUID)
    assert sick is not None and sick.needs_reset
    assert poll(health, backend, clock)  # 0: reset, and the quiet period has passed
    assert poll(health, backend, clock)


def test_without_samples_or_without_a_drop_it_keeps_waiting(tmp_path):
    backend = simulated(tmp_path, [1, 2, 3])
    clock = Clock()
    health = GpuHealth(GpuHealthSection(recovery_seconds=60), clock=clock)
    health.observe(backend.gpus())
    health.record(GpuEvent("xid", UUID, xid=79))
    for _ in range(3):
        assert not poll(health, backend, clock)  # only rising
    for _ in range(3):
        clock.now += 600
        health.observe(backend.gpus())  # no samples: no counters to go by
        assert not health.is_healthy(UUID)


def test_the_monitors_readings_carry_the_samples(tmp_path):
    """The health thread's NVML reading hands the samples on: a reset seen only in the
    counters reaches health through it."""
    backend = simulated(tmp_path, [0, 1, 1, 0, 0])
    clock = Clock()
    health = GpuHealth(GpuHealthSection(recovery_seconds=60), clock=clock)
    monitor = HealthMonitor(lambda: backend, health, interval=3600)

    def check() -> bool:
        clock.now += 60
        monitor._observe(backend)  # what each tick of the thread does
        return health.is_healthy(UUID)

    assert check()
    health.record(GpuEvent("ecc_double", UUID))
    assert not check()
    assert not check()
    assert check()  # the ECC total went down
