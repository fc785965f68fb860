"""CDI spec directories: precedence, conflicts, malformed files, refresh, files being replaced."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from agent.errors import InvalidArgument
from agent.gpu.cdi import registry as registry_module
from agent.gpu.cdi.registry import CdiRegistry
from agent.gpu.cdi.spec import Spec, parse_spec


def spec(kind: str = "vendor.com/dev", devices: dict[str, str] | None = None) -> str:
    devices = devices or {"a": "A=1"}
    return json.dumps(
        {
            "cdiVersion": "0.6.0",
            "kind": kind,
            "devices": [{"name": n, "containerEdits": {"env": [e]}} for n, e in devices.items()],
        }
    )


def write(path, text: str, *, atomic: bool = True) -> None:
    path = str(path)
    if atomic:
        tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    else:
        with open(path, "w") as f:
            f.write(text)


def env_of(registry: CdiRegistry, name: str) -> str:
    (device,) = registry.snapshot().resolve([name])
    return device.device.edits.env[0]


@pytest.fixture
def dirs(tmp_path):
    low, high = tmp_path / "etc-cdi", tmp_path / "run-cdi"
    low.mkdir()
    high.mkdir()
    return low, high


def test_a_later_directory_overrides_an_earlier_one(dirs):
    low, high = dirs
    write(low / "nvidia.yaml", spec(devices={"0": "FROM=etc", "1": "FROM=etc"}))
    write(high / "ours.json", spec(devices={"0": "FROM=run"}))
    registry = CdiRegistry([str(low), str(high)])
    assert env_of(registry, "vendor.com/dev=0") == "FROM=run"
    assert env_of(registry, "vendor.com/dev=1") == "FROM=etc"  # only the low spec has it
    snap = registry.snapshot()
    assert snap.overridden["vendor.com/dev=0"] == (
        str(high / "ours.json"),
        (str(low / "nvidia.yaml"),),
    )
    assert snap.problems == {}


def test_the_same_name_twice_in_one_directory_is_a_conflict(dirs, caplog):
    low, _ = dirs
    write(low / "a.json", spec(devices={"x": "A=1", "only-a": "A=2"}))
    write(low / "b.json", spec(devices={"x": "B=1"}))
    registry = CdiRegistry([str(low)])
    snap = registry.snapshot()
    assert snap.conflicts == {"vendor.com/dev=x": (str(low / "a.json"), str(low / "b.json"))}
    with pytest.raises(InvalidArgument, match=r"vendor.com/dev=x \(defined by more than one spec"):
        snap.resolve(["vendor.com/dev=x"])
    assert env_of(registry, "vendor.com/dev=only-a") == "A=2"  # the rest of the file works
    assert "unresolvable" in caplog.text


def test_the_agents_own_spec_wins_a_conflict_in_its_directory(dirs, caplog):
    # NVIDIA's toolkit may write nvidia.com/gpu specs beside the agent's in /var/run/cdi:
    # by the CDI rules every GPU name would become unresolvable; the agent's own wins.
    _, high = dirs
    write(high / "nvidia.com-gpu.json", spec(devices={"0": "OURS=1", "1": "OURS=2"}))
    write(high / "nvidia.yaml", spec(devices={"0": "TOOLKIT=1", "all": "TOOLKIT=2"}))
    own = str(high / "nvidia.com-gpu.json")
    registry = CdiRegistry([str(high)], own=own)
    snap = registry.snapshot()
    assert env_of(registry, "vendor.com/dev=0") == "OURS=1"
    assert env_of(registry, "vendor.com/dev=all") == "TOOLKIT=2"  # no conflict there
    assert snap.conflicts == {"vendor.com/dev=0": (own, str(high / "nvidia.yaml"))}
    assert snap.problems == {
        str(high / "nvidia.yaml"): "conflicting definition of vendor.com/dev=0"
    }
    assert "the agent's own spec wins" in caplog.text
    # Without an own spec the CDI rule holds: neither.
    with pytest.raises(InvalidArgument, match="more than one spec"):
        CdiRegistry([str(high)]).snapshot().resolve(["vendor.com/dev=0"])


def test_a_higher_directory_settles_a_lower_conflict(dirs):
    low, high = dirs
    write(low / "a.json", spec(devices={"x": "A=1"}))
    write(low / "b.json", spec(devices={"x": "B=1"}))
    write(high / "c.json", spec(devices={"x": "C=1"}))
    assert env_of(CdiRegistry([str(low), str(high)]), "vendor.com/dev=x") == "C=1"


def test_a_malformed_file_is_skipped_with_its_reason(dirs, caplog):
    low, _ = dirs
    write(low / "good.json", spec(devices={"ok": "A=1"}))
    write(low / "bad.json", '{"cdiVersion": "0.6.0", "kind": "vendor.com/dev", "devices": [{"nam')
    write(low / "worse.yaml", spec().replace('"cdiVersion"', '"cdiVersio"'))
    old = time.time() - 60
    for name in ("bad.json", "worse.yaml"):
        os.utime(low / name, (old, old))  # settled: not a file being written
    registry = CdiRegistry([str(low)])
    snap = registry.snapshot()
    assert env_of(registry, "vendor.com/dev=ok") == "A=1"
    assert "not valid JSON" in snap.problems[str(low / "bad.json")]
    assert "'cdiVersion' is required" in snap.problems[str(low / "worse.yaml")]
    assert "bad.json skipped" in caplog.text


def test_unresolvable_names_are_named_with_the_reason(dirs):
    low, _ = dirs
    write(low / "a.json", spec(devices={"a": "A=1"}))
    snap = CdiRegistry([str(low)]).snapshot()
    with pytest.raises(InvalidArgument) as exc:
        snap.resolve(["vendor.com/dev=a", "vendor.com/dev=zz", "other.com/x=1"])
    message = str(exc.value)
    assert "vendor.com/dev=zz (not defined by the vendor.com/dev specs)" in message
    assert "other.com/x=1 (no CDI spec for other.com/x" in message
    assert "dev=a " not in message
    with pytest.raises(InvalidArgument, match="not a qualified CDI device name"):
        snap.resolve(["gpu0"])


def test_refresh_sees_new_replaced_and_removed_files(dirs):
    low, high = dirs
    missing = high / "later"
    registry = CdiRegistry([str(low), str(missing)])
    assert registry.snapshot().devices == {}
    write(low / "a.json", spec(devices={"a": "V=1"}))
    assert env_of(registry, "vendor.com/dev=a") == "V=1"
    write(low / "a.json", spec(devices={"a": "V=2"}))
    assert env_of(registry, "vendor.com/dev=a") == "V=2"
    missing.mkdir()  # a directory that appears later is picked up
    write(missing / "b.json", spec(devices={"a": "V=3"}))
    assert env_of(registry, "vendor.com/dev=a") == "V=3"
    os.unlink(missing / "b.json")
    os.unlink(low / "a.json")
    assert registry.snapshot().devices == {}


def test_only_changed_files_are_read_again(dirs, monkeypatch):
    low, _ = dirs
    write(low / "a.json", spec(devices={"a": "A=1"}))
    write(low / "b.json", spec(kind="vendor.com/other", devices={"b": "B=1"}))
    parsed: list[str] = []
    real = parse_spec

    def counting(data: bytes, path: str) -> Spec:
        parsed.append(os.path.basename(path))
        return real(data, path)

    monkeypatch.setattr(registry_module, "parse_spec", counting)
    registry = CdiRegistry([str(low)])
    registry.snapshot()
    registry.snapshot()
    assert sorted(parsed) == ["a.json", "b.json"]
    write(low / "b.json", spec(kind="vendor.com/other", devices={"b": "B=2"}))
    registry.snapshot()
    assert sorted(parsed) == ["a.json", "b.json", "b.json"]


def test_hidden_temp_and_other_files_are_ignored(dirs):
    low, _ = dirs
    write(low / ".partial.json", "{")
    (low / "notes.txt").write_text("hello")
    (low / "a.json.tmp-123").write_text("{")
    (low / "sub.json").mkdir()
    snap = CdiRegistry([str(low)]).snapshot()
    assert snap.specs == () and snap.problems == {}


def test_a_file_being_written_in_place_keeps_its_previous_version(dirs):
    """A writer that truncates and writes (no rename) is caught half-way: the old spec stays."""
    low, _ = dirs
    path = low / "a.json"
    write(path, spec(devices={"a": "V=1"}))
    registry = CdiRegistry([str(low)])
    assert env_of(registry, "vendor.com/dev=a") == "V=1"
    full = spec(devices={"a": "V=2"})
    write(path, full[: len(full) // 2], atomic=False)  # half written, just now
    snap = registry.snapshot()
    assert env_of(registry, "vendor.com/dev=a") == "V=1"
    assert "previous version" in snap.problems[str(path)]
    write(path, full, atomic=False)  # the writer finishes
    assert env_of(registry, "vendor.com/dev=a") == "V=2"


def test_a_half_written_file_that_never_finishes_is_eventually_skipped(dirs):
    low, _ = dirs
    path = low / "a.json"
    write(path, spec(devices={"a": "V=1"}))
    registry = CdiRegistry([str(low)])
    registry.snapshot()
    write(path, "{", atomic=False)
    assert env_of(registry, "vendor.com/dev=a") == "V=1"
    old = time.time() - 60
    os.utime(path, (old, old))
    snap = registry.snapshot()
    assert snap.devices == {} and "not valid JSON" in snap.problems[str(path)]


def test_resolving_while_a_spec_is_replaced_never_fails(dirs):
    low, _ = dirs
    path = low / "a.json"
    write(path, spec(devices={"a": "V=0"}))
    registry = CdiRegistry([str(low)])
    stop = threading.Event()
    errors: list[BaseException] = []

    def replace_forever() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            write(path, spec(devices={"a": f"V={n}", "pad": "X=" + "x" * 5000}))

    writer = threading.Thread(target=replace_forever)
    writer.start()
    seen = set()
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                seen.add(env_of(registry, "vendor.com/dev=a"))
            except BaseException as exc:  # any failure fails the test
                errors.append(exc)
                break
    finally:
        stop.set()
        writer.join()
    assert errors == []
    assert len(seen) > 1  # it did see replacements


def test_invalidate_forces_a_recheck(dirs, monkeypatch):
    low, _ = dirs
    write(low / "a.json", spec())
    registry = CdiRegistry([str(low)])
    first = registry.snapshot()
    assert registry.snapshot() is first
    registry.invalidate()
    assert registry.snapshot().generation == first.generation + 1


def test_a_writer_that_died_half_way_leaves_a_malformed_file(dirs, monkeypatch):
    """No further change: once the file has settled it is skipped like any malformed one."""
    low, _ = dirs
    path = low / "a.json"
    write(path, spec(devices={"a": "V=1"}))
    registry = CdiRegistry([str(low)])
    registry.snapshot()
    write(path, '{"cdiVersion": "0.6.0", "kin', atomic=False)
    assert env_of(registry, "vendor.com/dev=a") == "V=1"
    monkeypatch.setattr(registry_module, "SETTLE_SECONDS", 0.0)  # time passes
    snap = registry.snapshot()
    assert snap.devices == {} and "not valid JSON" in snap.problems[str(path)]
    assert "previous version" not in snap.problems[str(path)]
