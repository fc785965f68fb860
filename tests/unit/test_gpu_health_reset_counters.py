"""A driver reload quicker than one reading: NVML answers throughout, but the energy
counter (since the driver loaded) went down, so a GPU waiting for a reset may recover.
Clearing the volatile ECC counts (``nvidia-smi -p 0``) is no reset (the simulated NVML
backend for the GPU; samples written here)."""

from __future__ import annotations

from agent.config import GpuHealthSection
from agent.gpu.backend import GpuBackend, GpuEvent, GpuSample
from agent.gpu.health import GpuHealth
from agent.gpu.health_monitor import HealthMonitor
from agent.gpu.simulated import SimulatedBackend
from tests.unit.test_gpu_health import Clock

UUID = "GPU-22222222-2222-2222-2222-222222222222"


class Readings(SimulatedBackend):
    """One simulated GPU whose samples follow the given energy and ECC series."""

    def __init__(self, tmp_path, energy: list[float], ecc: list[int] | None = None) -> None:
        path = tmp_path / "sim.toml"
        path.write_text(
            f'driver_version = "550.54.15"\n[[gpus]]\nuuid = "{UUID}"\n'
            'name = "NVIDIA H100 80GB HBM3"\n'
        )
        super().__init__(str(path))
        self.open()
        self._series = list(zip(energy, ecc or [0] * len(energy), strict=True))

    def samples(self) -> list[GpuSample]:
        joules, ecc = self._series.pop(0) if len(self._series) > 1 else self._series[0]
        return [GpuSample(UUID, "0", energy_joules=joules, ecc_uncorrected_volatile=ecc)]


def poll(health: GpuHealth, backend: GpuBackend, clock: Clock) -> bool:
    """One health check a minute later; whether the GPU is healthy after it."""
    clock.now += 60
    health.observe(backend.gpus(), backend.samples())
    return health.is_healthy(UUID)


def test_a_drop_of_the_energy_counter_is_a_reset(tmp_path):
    backend = Readings(tmp_path, energy=[100.0, 200.0, 300.0, 5.0, 50.0])
    clock = Clock()
    health = GpuHealth(GpuHealthSection(recovery_seconds=60), clock=clock)
    assert poll(health, backend, clock)
    health.record(GpuEvent("ecc_double", UUID))
    assert not poll(health, backend, clock)
    assert not poll(health, backend, clock)  # still rising, NVML answers: no reset yet
    sick = health.of(UUID)
    assert sick is not None and sick.needs_reset
    assert poll(health, backend, clock)  # 300 -> 5: the driver reloaded, quiet since
    assert poll(health, backend, clock)


def test_cleared_ecc_counts_or_no_samples_are_no_reset(tmp_path):
    backend = Readings(tmp_path, energy=[100.0, 200.0, 300.0, 400.0], ecc=[0, 1, 0, 0])
    clock = Clock()
    health = GpuHealth(GpuHealthSection(recovery_seconds=60), clock=clock)
    assert poll(health, backend, clock)
    health.record(GpuEvent("ecc_double", UUID))
    for _ in range(3):
        assert not poll(health, backend, clock)  # the ECC total 1 -> 0 was a clear
    for _ in range(3):
        clock.now += 600
        health.observe(backend.gpus())  # no samples: no counters to go by
        assert not health.is_healthy(UUID)


def test_the_monitors_readings_carry_the_samples(tmp_path):
    """The health thread's NVML reading hands the samples on: a reset seen only in the
    counter reaches health through it."""
    backend = Readings(tmp_path, energy=[100.0, 200.0, 300.0, 5.0])
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
    assert check()  # the energy counter went down
