"""The NVML backend against a fake ``pynvml`` module: errors contained per GPU and per field.

The fake implements the handful of NVML calls the backend makes, keyed by the
device a handle names, and raises ``NVMLError`` with NVML's return codes where a
test asks. Real NVML is exercised by ``tests/gpu`` on a GPU machine.
"""

from __future__ import annotations

import sys
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from agent.gpu.nvml import NvmlBackend
from agent.gpu.nvml_read import mig_profile_from_name

NOT_SUPPORTED, NOT_FOUND, TIMEOUT, LIB_NOT_FOUND, GPU_IS_LOST, UNKNOWN = 3, 6, 10, 12, 15, 999
GIB = 1024**3


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


class FakeNvml:
    """A stand-in for the ``pynvml`` module (the functions the backend calls)."""

    def __init__(self, gpus: list[dict[str, Any]], *, init_error: int | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.nvmlLib = None
        self.events: list[Any] = []
        self.event_error: int | None = None
        self.freed: list[Any] = []
        self.gpm_counter = 0

    # helpers
    def _dev(self, handle: Any) -> dict[str, Any]:
        return handle

    def _get(self, handle: Any, key: str) -> Any:
        value = handle.get(key)
        if isinstance(value, NVMLError):
            raise value
        if value is None:
            raise NVMLError(NOT_SUPPORTED)
        return value

    # system
    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        pass

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        return 12040

    def nvmlSystemGetNVMLVersion(self) -> str:
        return "12.550.54.15"

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        gpu = self.gpus[index]
        if isinstance(gpu.get("handle"), NVMLError):
            raise gpu["handle"]
        return gpu

    # device identity
    def nvmlDeviceGetUUID(self, h: Any) -> str:
        return self._get(h, "uuid")

    def nvmlDeviceGetName(self, h: Any) -> str:
        return self._get(h, "name")

    def nvmlDeviceGetMemoryInfo(self, h: Any, version: Any = None) -> Any:
        total = self._get(h, "memory")
        used = h.get("used", 0)
        return SimpleNamespace(total=total, free=total - used - 5, used=used, reserved=5)

    def nvmlDeviceGetPciInfo(self, h: Any) -> Any:
        return SimpleNamespace(busId=self._get(h, "bus"))

    def nvmlDeviceGetNumaNodeId(self, h: Any) -> int:
        return self._get(h, "numa")

    def nvmlDeviceGetArchitecture(self, h: Any) -> int:
        return 9

    def nvmlDeviceGetCudaComputeCapability(self, h: Any) -> tuple[int, int]:
        return (9, 0)

    def nvmlDeviceGetBrand(self, h: Any) -> int:
        return 14

    def nvmlDeviceGetMinorNumber(self, h: Any) -> int:
        return self._get(h, "minor")

    def nvmlDeviceGetMigMode(self, h: Any) -> list[int]:
        return self._get(h, "mig_mode")

    def nvmlDeviceGetMaxMigDeviceCount(self, h: Any) -> int:
        return len(h.get("migs", []))

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: Any, slot: int) -> Any:
        mig = h["migs"][slot]
        if mig is None:
            raise NVMLError(NOT_FOUND)
        return mig

    def nvmlDeviceGetGpuInstanceId(self, h: Any) -> int:
        return h["gi"]

    def nvmlDeviceGetComputeInstanceId(self, h: Any) -> int:
        return h["ci"]

    def nvmlDeviceGetAttributes(self, h: Any) -> Any:
        return SimpleNamespace(
            multiprocessorCount=16,
            gpuInstanceSliceCount=1,
            computeInstanceSliceCount=1,
            memorySizeMB=h["memory"] // (1024 * 1024),
        )

    def nvmlGpmQueryDeviceSupport(self, h: Any) -> Any:
        return SimpleNamespace(isSupportedDevice=1 if h.get("gpm") else 0)

    # samples
    def nvmlDeviceGetUtilizationRates(self, h: Any) -> Any:
        util = self._get(h, "util")
        return SimpleNamespace(gpu=util, memory=util // 2)

    def nvmlDeviceGetEncoderUtilization(self, h: Any) -> list[int]:
        return [3, 1000]

    def nvmlDeviceGetDecoderUtilization(self, h: Any) -> list[int]:
        return [4, 1000]

    def nvmlDeviceGetPowerUsage(self, h: Any) -> int:
        return self._get(h, "power_mw")

    def nvmlDeviceGetTotalEnergyConsumption(self, h: Any) -> int:
        return 123_000

    def nvmlDeviceGetTemperature(self, h: Any, sensor: int) -> int:
        return 40

    def nvmlDeviceGetFieldValues(self, h: Any, ids: list[int]) -> Any:
        value = SimpleNamespace(nvmlReturn=0, valueType=1, value=SimpleNamespace(uiVal=55))
        return [value]

    def nvmlDeviceGetClockInfo(self, h: Any, clock: int) -> int:
        return 1980 if clock == 1 else 2619

    def nvmlDeviceGetPcieReplayCounter(self, h: Any) -> int:
        return 2

    def nvmlDeviceGetRemappedRows(self, h: Any) -> tuple[int, int, int, int]:
        return (1, 0, 0, 0)

    def nvmlDeviceGetTotalEccErrors(self, h: Any, kind: int, counter: int) -> int:
        return self._get(h, "ecc")

    # processes
    def nvmlDeviceGetComputeRunningProcesses(self, h: Any) -> list[Any]:
        return h.get("procs", [])

    def nvmlDeviceGetGraphicsRunningProcesses(self, h: Any) -> list[Any]:
        return []

    def nvmlDeviceGetProcessUtilization(self, h: Any, since: int) -> list[Any]:
        samples = h.get("putil")
        if samples is None:
            raise NVMLError(NOT_FOUND)
        return [s for s in samples if s.timeStamp > since]

    # GPM
    def nvmlGpmSampleAlloc(self) -> Any:
        self.gpm_counter += 1
        return SimpleNamespace(n=self.gpm_counter)

    def nvmlGpmSampleGet(self, h: Any, sample: Any) -> Any:
        return sample

    def nvmlGpmMigSampleGet(self, h: Any, gi: int, sample: Any) -> Any:
        sample.gi = gi
        return sample

    def nvmlGpmSampleFree(self, sample: Any) -> None:
        self.freed.append(sample)

    def c_nvmlGpmMetricsGet_t(self) -> Any:
        metrics = [SimpleNamespace(metricId=0, nvmlReturn=0, value=0.0) for _ in range(16)]
        return SimpleNamespace(version=0, numMetrics=0, sample1=None, sample2=None, metrics=metrics)

    def nvmlGpmMetricsGet(self, request: Any) -> Any:
        for metric in request.metrics[: request.numMetrics]:
            if metric.metricId == 2:  # SM active
                metric.value = 42.0
            elif metric.metricId == 20:  # PCIe TX, MiB/s
                metric.value = 2.0
            else:
                metric.nvmlReturn = NOT_SUPPORTED
        return request

    # NVLink
    def nvmlDeviceGetNvLinkState(self, h: Any, link: int) -> int:
        links = h.get("nvlinks", [])
        if link >= len(links):
            raise NVMLError(2)  # NVML_ERROR_INVALID_ARGUMENT: no such link
        return 1 if links[link] else 0

    def nvmlDeviceGetNvLinkRemotePciInfo(self, h: Any, link: int) -> Any:
        return SimpleNamespace(busId=h["nvlinks"][link])

    # events
    def nvmlEventSetCreate(self) -> Any:
        return "event-set"

    def nvmlDeviceGetSupportedEventTypes(self, h: Any) -> int:
        return 0xFF

    def nvmlDeviceRegisterEvents(self, h: Any, mask: int, event_set: Any) -> None:
        h["registered"] = mask

    def nvmlEventSetWait_v2(self, event_set: Any, timeout_ms: int) -> Any:
        if self.event_error is not None:
            raise NVMLError(self.event_error)
        if self.events:
            return self.events.pop(0)
        time.sleep(min(timeout_ms, 20) / 1000)
        raise NVMLError(TIMEOUT)

    def nvmlEventSetFree(self, event_set: Any) -> None:
        self.freed.append(event_set)


def gpu(index: int, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "uuid": f"GPU-{index}{index}{index}",
        "name": "NVIDIA H100 80GB HBM3",
        "memory": 80 * GIB,
        "bus": f"00000000:{0x18 + index:02X}:00.0",
        "numa": index,
        "minor": index,
        "mig_mode": [0, 0],
        "util": 60,
        "power_mw": 250_000,
        "ecc": 0,
    }
    base.update(extra)
    return base


def mig_proc_root(tmp_path, minor: int, gi: int, ci: int, gi_minor: int, ci_minor: int) -> str:
    base = tmp_path / "proc" / "driver" / "nvidia" / "capabilities" / f"gpu{minor}" / "mig"
    (base / f"gi{gi}" / f"ci{ci}").mkdir(parents=True)
    (base / f"gi{gi}" / "access").write_text(f"DeviceFileMinor: {gi_minor}\nDeviceFileMode: 292\n")
    (base / f"gi{gi}" / f"ci{ci}" / "access").write_text(f"DeviceFileMinor: {ci_minor}\n")
    return str(tmp_path / "proc")


def opened(fake: FakeNvml, **kwargs: Any) -> NvmlBackend:
    backend = NvmlBackend(nvml_module=fake, **kwargs)
    backend.open()
    return backend


def test_no_library_is_a_reported_state():
    backend = NvmlBackend(nvml_module=FakeNvml([], init_error=LIB_NOT_FOUND))
    status = backend.open()
    assert not status.available and "libnvidia-ml.so.1 not found" in status.reason
    assert backend.gpus() == [] and backend.samples() == [] and backend.processes() == []


def test_no_gpu_is_a_reported_state():
    status = opened(FakeNvml([])).status()
    assert not status.available and "no GPU" in status.reason


def test_inventory_of_healthy_gpus_and_the_driver():
    backend = opened(FakeNvml([gpu(0), gpu(1)]))
    assert backend.status().available and backend.status().gpu_count == 2
    d = backend.driver()
    assert (d.driver_version, d.cuda_driver_version, d.nvml_version) == (
        "550.54.15",
        "12.4",
        "12.550.54.15",
    )
    g0, g1 = backend.gpus()
    assert (g0.uuid, g0.minor, g0.numa_node, g0.pci_bus_id) == ("GPU-000", 0, 0, "00000000:18:00.0")
    assert (g0.architecture, g0.brand, g0.cuda_compute_capability) == ("Hopper", "Nvidia", "9.0")
    assert g0.memory_total == 80 * GIB and g0.mig_mode == "disabled" and g0.state == "ok"
    assert g1.uuid == "GPU-111"


def test_a_lost_gpu_does_not_hide_the_others():
    lost = gpu(1, uuid=NVMLError(GPU_IS_LOST))
    backend = opened(FakeNvml([gpu(0), lost, gpu(2)]))
    states = [(g.index, g.state) for g in backend.gpus()]
    assert states == [(0, "ok"), (1, "lost"), (2, "ok")]
    samples = backend.samples()
    assert [(s.index, s.state) for s in samples] == [("0", "ok"), ("1", "lost"), ("2", "ok")]


def test_a_gpu_that_cannot_be_opened_is_an_error_state():
    backend = opened(FakeNvml([gpu(0, handle=NVMLError(UNKNOWN)), gpu(1)]))
    g0, g1 = backend.gpus()
    assert g0.state == "error" and "cannot open GPU 0" in g0.error and g1.state == "ok"


def test_unsupported_and_failing_fields_are_sorted_not_fatal():
    odd = gpu(0, numa=None, ecc=NVMLError(UNKNOWN), power_mw=None)
    backend = opened(FakeNvml([odd]))
    (info,) = backend.gpus()
    assert info.state == "ok" and info.numa_node is None  # unsupported: no error recorded
    (sample,) = backend.samples()
    assert sample.power_watts is None and "power_watts" in sample.unsupported
    assert "ecc_corrected_volatile" in sample.errors  # a real failure, reported
    assert sample.gpu_util == 60.0 and sample.mem_copy_util == 30.0
    assert sample.memory_temp_c == 55.0 and sample.sm_clock_mhz == 1980.0
    assert sample.energy_joules == 123.0 and sample.memory_reserved == 5


def test_a_gpu_without_minor_is_not_usable():
    backend = opened(FakeNvml([gpu(0, minor=NVMLError(UNKNOWN))]))
    (info,) = backend.gpus()
    assert info.state == "error" and "minor" in info.error


def test_mig_devices_with_profiles_and_capability_minors(tmp_path):
    migs = [
        None,  # an empty slot (NVML_ERROR_NOT_FOUND)
        {
            "uuid": "MIG-aaa",
            "gi": 7,
            "ci": 0,
            "memory": 16 * GIB,
            "name": "NVIDIA H100 MIG 1g.18gb",
        },
    ]
    proc = mig_proc_root(tmp_path, 0, 7, 0, 66, 67)
    backend = opened(FakeNvml([gpu(0, mig_mode=[1, 1], migs=migs)]), proc_root=proc)
    (info,) = backend.gpus()
    assert info.mig_mode == "enabled" and len(info.mig_devices) == 1
    mig = info.mig_devices[0]
    assert (mig.index, mig.uuid, mig.gpu_instance_id, mig.compute_instance_id) == (
        1,
        "MIG-aaa",
        7,
        0,
    )
    assert (mig.profile, mig.gi_cap_minor, mig.ci_cap_minor) == ("1g.18gb", 66, 67)
    assert mig.memory_total == 16 * GIB and mig.multiprocessor_count == 16
    samples = {s.index: s for s in backend.samples()}
    assert samples["0:1"].uuid == "MIG-aaa" and samples["0:1"].parent_uuid == "GPU-000"


def test_mig_profile_falls_back_to_attributes():
    mib = 1024 * 1024
    migs = [{"uuid": "MIG-b", "gi": 1, "ci": 0, "memory": 9856 * mib, "name": "odd name"}]
    backend = opened(FakeNvml([gpu(0, memory=81559 * mib, mig_mode=[1, 0], migs=migs)]))
    (info,) = backend.gpus()
    assert info.mig_pending == "disabled"
    # go-nvlib's rounding: 9856 MiB of an 80 GB H100 is 1/8 of it, named 10gb.
    assert info.mig_devices[0].profile == "1g.10gb"
    assert mig_profile_from_name("NVIDIA A100-SXM4-40GB MIG 3g.20gb") == "3g.20gb"


def test_processes_name_their_mig_device():
    procs = [
        SimpleNamespace(pid=10, usedGpuMemory=GIB, gpuInstanceId=7, computeInstanceId=0),
        SimpleNamespace(
            pid=11, usedGpuMemory=None, gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF
        ),
    ]
    migs = [{"uuid": "MIG-aaa", "gi": 7, "ci": 0, "memory": 16 * GIB, "name": "x MIG 1g.18gb"}]
    backend = opened(FakeNvml([gpu(0, mig_mode=[1, 1], migs=migs, procs=procs)]))
    p10, p11 = backend.processes()
    assert (p10.pid, p10.used_memory, p10.mig_uuid, p10.gpu_instance_id) == (10, GIB, "MIG-aaa", 7)
    assert (p11.pid, p11.used_memory, p11.mig_uuid, p11.gpu_instance_id) == (11, None, "", None)


def test_process_utilisation_only_newer_samples_and_none_yet():
    samples = [
        SimpleNamespace(pid=5, timeStamp=100, smUtil=30, memUtil=10, encUtil=0, decUtil=0),
        SimpleNamespace(pid=6, timeStamp=200, smUtil=70, memUtil=20, encUtil=1, decUtil=2),
    ]
    backend = opened(FakeNvml([gpu(0, putil=samples), gpu(1)]))  # GPU 1: NOT_FOUND (none yet)
    assert [(u.pid, u.sm_util) for u in backend.process_utilization(150)] == [(6, 70.0)]


def test_gpm_primes_then_reports_metrics_and_frees_samples():
    fake = FakeNvml([gpu(0, gpm=True), gpu(1)])
    backend = opened(fake)
    backend.gpus()
    assert backend.gpm_samples() == []
    (sample,) = backend.gpm_samples()
    assert sample.uuid == "GPU-000" and sample.metrics["sm_active"] == 42.0
    assert sample.metrics["pcie_tx_bytes_per_second"] == 2.0 * 1024 * 1024
    assert "tensor_active" not in sample.metrics  # unsupported metrics are left out
    assert len(fake.freed) == 1  # the older sample
    backend.close()
    assert len(fake.freed) == 2


def test_events_xid_timeout_and_wait_errors():
    fake = FakeNvml([gpu(0), gpu(1)])
    backend = opened(fake)
    stream = backend.open_events()
    assert fake.gpus[0]["registered"] == 0x8 | 0x1 | 0x2
    fake.events = [
        SimpleNamespace(
            device=fake.gpus[1],
            eventType=0x8,
            eventData=79,
            gpuInstanceId=0xFFFFFFFF,
            computeInstanceId=0xFFFFFFFF,
        ),
        SimpleNamespace(
            device=fake.gpus[0],
            eventType=0x2,
            eventData=0,
            gpuInstanceId=0xFFFFFFFF,
            computeInstanceId=0xFFFFFFFF,
        ),
    ]
    events = stream.wait(1.0)
    assert [(e.kind, e.uuid, e.xid) for e in events] == [
        ("xid", "GPU-111", 79),
        ("ecc_double", "GPU-000", 0),
    ]
    assert stream.wait(0.05) == []
    fake.event_error = GPU_IS_LOST
    (lost,) = stream.wait(0.05)
    assert lost.kind == "gpu_lost" and lost.uuid == ""
    fake.event_error = UNKNOWN
    (error,) = stream.wait(0.05)
    assert error.kind == "error"
    stream.close()
    assert "event-set" in fake.freed


def test_close_during_a_wait_frees_the_set_after_it_returns():
    fake = FakeNvml([gpu(0)])
    stream = opened(fake).open_events()
    done = threading.Event()

    def waiter() -> None:
        stream.wait(30)
        done.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.05)
    stream.close()
    assert done.wait(3)
    thread.join()
    assert fake.freed == ["event-set"]


def test_a_missing_pynvml_is_a_reported_state(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    status = NvmlBackend().open()
    assert not status.available and "nvidia-ml-py is not installed" in status.reason


@pytest.mark.parametrize("code", [LIB_NOT_FOUND, 9, UNKNOWN])
def test_init_failures_have_reasons(code):
    status = NvmlBackend(nvml_module=FakeNvml([], init_error=code)).open()
    assert not status.available
    assert status.reason.split(":")[0] in (
        "no NVML library",
        "the NVIDIA kernel driver is not loaded",
        "NVML failed to initialise",
    )


def test_nvlink_peers_are_the_gpus_at_the_far_end_of_active_links():
    fake = FakeNvml(
        [
            gpu(0, nvlinks=["00000000:19:00.0", None, "00000000:AA:00.0"]),  # GPU 1, off, NVSwitch
            gpu(1, nvlinks=["00000000:18:00.0"]),
            gpu(2),  # no NVLink at all (INVALID_ARGUMENT on link 0)
        ]
    )
    g0, g1, g2 = opened(fake).gpus()
    assert g0.nvlink_peers == ("GPU-111",)  # the NVSwitch is no GPU
    assert g1.nvlink_peers == ("GPU-000",) and g2.nvlink_peers == ()


class NVMLLibraryMismatchError(Exception):
    """What pynvml raises when the driver lacks the versioned call it wraps."""


class OldDriver(FakeNvml):
    """A driver without the newer calls: no memory v2, no _v3 processes, no TemperatureV."""

    def nvmlDeviceGetMemoryInfo(self, h: Any, version: Any = None) -> Any:
        if version is not None:
            raise NVMLError(13)  # NVML_ERROR_FUNCTION_NOT_FOUND
        return super().nvmlDeviceGetMemoryInfo(h)

    def nvmlDeviceGetComputeRunningProcesses(self, h: Any) -> list[Any]:
        raise NVMLLibraryMismatchError("use a versioned function")

    def nvmlDeviceGetComputeRunningProcesses_v2(self, h: Any) -> list[Any]:
        return h.get("procs", [])


def test_an_older_driver_falls_back_to_the_older_calls():
    procs = [SimpleNamespace(pid=7, usedGpuMemory=GIB)]
    backend = opened(OldDriver([gpu(0, procs=procs)]))
    (sample,) = backend.samples()
    assert sample.memory_total == 80 * GIB and sample.gpu_temp_c == 40.0
    assert "memory" not in sample.unsupported and "gpu_temp_c" not in sample.unsupported
    assert [p.pid for p in backend.processes()] == [7]
