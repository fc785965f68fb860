"""The simulated GPU backend: the file format, series, processes, events, re-reading."""

from __future__ import annotations

import os
import threading
import time

import pytest

from agent.errors import ConfigError
from agent.gpu.backend import GpuEvent
from agent.gpu.simulated import SimulatedBackend
from agent.gpu.simulated_file import load_simulation
from tests.support.gpu_node import GPU0, GPU1, MIG0, simulation_toml

MIB = 1024 * 1024


def backend(tmp_path, text: str, name: str = "sim.toml") -> SimulatedBackend:
    path = tmp_path / name
    path.write_text(text)
    b = SimulatedBackend(str(path))
    b.open()
    return b


def rewrite(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def test_inventory_fields_and_driver(tmp_path, caplog):
    b = backend(tmp_path, simulation_toml(mig=True))
    assert "SIMULATED" in caplog.text  # never silent
    status = b.status()
    assert status.available and status.gpu_count == 2 and "SIMULATED" in status.reason
    driver = b.driver()
    assert (driver.driver_version, driver.cuda_driver_version) == ("550.54.15", "12.4")
    g0, g1 = b.gpus()
    assert (g0.index, g0.uuid, g0.minor, g0.numa_node) == (0, GPU0, 0, 0)
    assert g0.memory_total == 81559 * MIB
    assert g0.pci_bus_id == "00000000:18:00.0" and g0.mig_mode == "disabled"
    assert (g0.architecture, g0.cuda_compute_capability, g0.brand) == ("Hopper", "9.0", "Nvidia")
    assert g1.mig_mode == "enabled" and len(g1.mig_devices) == 1
    mig = g1.mig_devices[0]
    assert (mig.uuid, mig.gpu_instance_id, mig.compute_instance_id) == (MIG0, 7, 0)
    assert (mig.profile, mig.gi_cap_minor, mig.ci_cap_minor) == ("1g.18gb", 12, 13)


def test_series_advance_per_sample_and_energy_integrates(tmp_path):
    b = backend(tmp_path, simulation_toml(mig=True))
    utils = []
    for _ in range(4):
        samples = {s.index: s for s in b.samples()}
        utils.append(samples["0"].gpu_util)
        time.sleep(0.01)
    assert utils == [10.0, 50.0, 90.0, 10.0]
    s0 = {s.index: s for s in b.samples()}["0"]
    assert s0.memory_used == 1024 * MIB  # the fifth reading: element 4 mod 2
    assert s0.memory_total is not None and s0.memory_used is not None
    assert s0.memory_free == s0.memory_total - s0.memory_used - (s0.memory_reserved or 0)
    assert s0.power_watts == 300.0
    assert s0.energy_joules is not None and s0.energy_joules > 0  # 300 W over ~40 ms
    assert "ecc_corrected_volatile" in s0.unsupported and s0.ecc_corrected_volatile is None


def test_mig_devices_have_their_own_samples_without_utilisation(tmp_path):
    b = backend(tmp_path, simulation_toml(mig=True))
    samples = {s.index: s for s in b.samples()}
    assert set(samples) == {"0", "1", "1:0"}
    mig = samples["1:0"]
    assert (mig.uuid, mig.parent_uuid, mig.gpu_instance_id, mig.profile) == (
        MIG0,
        GPU1,
        7,
        "1g.18gb",
    )
    assert mig.memory_used == 100 * MIB and mig.gpu_util is None
    assert "gpu_util" in mig.unsupported
    assert samples["1"].gpu_util is None  # a GPU in MIG mode has no whole-GPU utilisation


def test_advance_seconds_makes_series_time_based(tmp_path):
    b = backend(tmp_path, "advance_seconds = 0.05\n" + simulation_toml())
    first = {s.index: s for s in b.samples()}["0"].gpu_util
    again = {s.index: s for s in b.samples()}["0"].gpu_util
    time.sleep(0.06)
    later = {s.index: s for s in b.samples()}["0"].gpu_util
    assert first == again == 10.0 and later == 50.0


def test_processes_and_per_process_utilisation(tmp_path):
    procs = f"""
[[processes]]
gpu = "{GPU0}"
pid = 4242
used_memory_mib = [512, 1024]
sm_util = [30, 60]
[[processes]]
gpu = 1
mig = "1:0"
pid = 4343
used_memory_mib = 256
"""
    b = backend(tmp_path, simulation_toml(mig=True, processes=procs))
    p0, p1 = b.processes()
    assert (p0.gpu_uuid, p0.pid, p0.used_memory, p0.mig_uuid) == (GPU0, 4242, 512 * MIB, "")
    assert (p1.gpu_uuid, p1.pid, p1.mig_uuid, p1.gpu_instance_id) == (GPU1, 4343, MIG0, 7)
    utils = b.process_utilization(0)
    assert [(u.pid, u.sm_util) for u in utils] == [(4242, 30.0)]  # none per process on MIG
    assert b.process_utilization(utils[0].timestamp_us + 10**9) == []  # only newer samples


def test_set_processes_overrides_the_file_and_can_be_undone(tmp_path):
    b = backend(tmp_path, simulation_toml())
    assert b.processes() == []
    b.set_processes([{"gpu": 1, "pid": os.getpid(), "used_memory_mib": 64}])
    assert [(p.gpu_uuid, p.pid) for p in b.processes()] == [(GPU1, os.getpid())]
    with pytest.raises(ValueError, match="not a GPU"):
        b.set_processes([{"gpu": 7, "pid": 1}])
    b.set_processes(None)
    assert b.processes() == []


def test_the_file_is_reread_when_it_changes(tmp_path, caplog):
    b = backend(tmp_path, simulation_toml())
    path = b.path
    rewrite(path, simulation_toml(processes=f'[[processes]]\ngpu = "{GPU1}"\npid = 77\n'))
    assert [p.pid for p in b.processes()] == [77]
    rewrite(path, "this is = not [valid toml")
    assert [p.pid for p in b.processes()] == [77]  # the previous state stays
    assert "keeping the previous state" in caplog.text


def test_events_are_delivered_once_when_due(tmp_path):
    events = f"""
[[events]]
gpu = "{GPU0}"
xid = 79
[[events]]
gpu = 1
kind = "ecc_double"
at_seconds = 0.3
"""
    b = backend(tmp_path, simulation_toml(events=events))
    stream = b.open_events()
    first = stream.wait(0.2)
    assert [(e.kind, e.uuid, e.xid) for e in first] == [("xid", GPU0, 79)]
    later = stream.wait(2.0)
    assert [(e.kind, e.uuid) for e in later] == [("ecc_double", GPU1)]
    assert stream.wait(0.1) == []


def test_events_added_to_the_file_and_injected_arrive(tmp_path):
    b = backend(tmp_path, simulation_toml(mig=True))
    stream = b.open_events()
    assert stream.wait(0.05) == []
    rewrite(
        b.path,
        simulation_toml(mig=True, events=f'[[events]]\ngpu = 1\nmig = "{MIG0}"\nxid = 43\n'),
    )
    got = stream.wait(1.0)
    assert [(e.xid, e.mig_uuid, e.gpu_instance_id) for e in got] == [(43, MIG0, 7)]
    b.inject_event(GpuEvent("xid", GPU0, 48))
    assert [e.xid for e in stream.wait(1.0)] == [48]


def test_a_gpu_lost_in_the_file_raises_one_event_and_reports_its_state(tmp_path):
    b = backend(tmp_path, simulation_toml())
    stream = b.open_events()
    lost = simulation_toml().replace(
        f'uuid = "{GPU1}"', f'uuid = "{GPU1}"\nstate = "lost"\nerror = "fell off the bus"'
    )
    rewrite(b.path, lost)
    assert [(e.kind, e.uuid) for e in stream.wait(1.0)] == [("gpu_lost", GPU1)]
    assert stream.wait(0.1) == []
    g1 = b.gpus()[1]
    assert (g1.state, g1.error) == ("lost", "fell off the bus")
    s1 = {s.index: s for s in b.samples()}["1"]
    assert s1.state == "lost" and s1.gpu_util is None


def test_close_wakes_a_waiting_thread(tmp_path):
    b = backend(tmp_path, simulation_toml())
    stream = b.open_events()
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(stream.wait(30)))
    start = time.monotonic()
    thread.start()
    time.sleep(0.05)
    stream.close()
    thread.join(5)
    assert result == [[]] and time.monotonic() - start < 2


def test_gpm_first_call_primes_then_reports(tmp_path):
    b = backend(tmp_path, simulation_toml())
    assert b.gpm_samples() == []
    time.sleep(0.01)
    (sample,) = b.gpm_samples()  # only GPU 0 has gpm_supported
    assert sample.uuid == GPU0 and sample.interval_seconds > 0
    assert sample.metrics == {"sm_active": 20.0, "tensor_active": 10.0}


def test_json_files_work_too(tmp_path):
    text = '{"gpus": [{"uuid": "GPU-aa", "name": "x"}], "cuda_driver_version": 12020}'
    b = backend(tmp_path, text, "sim.json")
    assert [g.uuid for g in b.gpus()] == ["GPU-aa"]
    assert b.driver().cuda_driver_version == "12.2"  # NVML's integer form


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[gpus]]\nname = "x"\n', r"gpus\[0\]: 'uuid' is required"),
        ('[[gpus]]\nuuid = "GPU-a"\ncolour = "red"\n', "unknown key 'colour'"),
        ('[[gpus]]\nuuid = "nope"\n', "starts with 'GPU-'"),
        ('[[gpus]]\nuuid = "GPU-a"\nminor = "zero"\n', r"minor: expected an integer"),
        ('[[gpus]]\nuuid = "GPU-a"\n[gpus.samples]\ngpu_util = []\n', "non-empty list"),
        ('[[gpus]]\nuuid = "GPU-a"\n[[gpus]]\nuuid = "GPU-a"\n', "appears twice"),
        (
            '[[gpus]]\nuuid = "GPU-a"\nmig_mode = "disabled"\n[[gpus.mig]]\nuuid = "MIG-b"\n'
            'gpu_instance_id = 1\ncompute_instance_id = 0\nprofile = "1g.5gb"\n',
            "MIG devices listed but mig_mode is disabled",
        ),
        ("[[processes]]\ngpu = 0\npid = 1\n", "not a GPU of this file"),
        ('[[gpus]]\nuuid = "GPU-a"\n[[events]]\ngpu = 0\n', "needs a positive xid"),
        ('[[gpus]]\nuuid = "GPU-a"\n[[events]]\ngpu = 0\nkind = "fire"\n', "is not one of"),
        ("not toml at all [", "gpu.simulated_file"),
    ],
)
def test_bad_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_simulation(str(path))


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="No such file"):
        SimulatedBackend(str(tmp_path / "none.toml")).open()


def test_nvlink_peers_by_index_or_uuid(tmp_path):
    text = (
        simulation_toml()
        .replace("numa_node = 0\n", "numa_node = 0\nnvlink_peers = [1]\n")
        .replace("numa_node = 1\n", f'numa_node = 1\nnvlink_peers = ["{GPU0}"]\n')
    )
    g0, g1 = backend(tmp_path, text).gpus()
    assert (g0.nvlink_peers, g1.nvlink_peers) == ((GPU1,), (GPU0,))
    bad = simulation_toml().replace("numa_node = 0\n", "numa_node = 0\nnvlink_peers = [5]\n")
    with pytest.raises(ConfigError, match="nvlink_peers"):
        backend(tmp_path, bad, "bad.toml")
