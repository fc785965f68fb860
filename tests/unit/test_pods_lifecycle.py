"""The container and sandbox state machines, exits and recovery, over a FakeRuntime.

No root, runc or conmon: the runtime is ``tests.fakes.runtime.FakeRuntime``,
which reports exits through real exit files, so the real exit watcher and
exit tracker record them. The integration tests cover the same paths on runc.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, cast

import pytest

from agent.errors import FailedPrecondition, NotFound
from agent.oci import CreateFailed, CreateOptions, ExitStatus, RuncStatus
from agent.pods import model
from agent.pods.events import EventKind
from agent.pods.state import ContainerState, SandboxState
from tests.fakes.pods import IMAGE, FakeImages, FakePods, build, built


@pytest.fixture
async def pods(config) -> AsyncIterator[FakePods]:
    async with built(config) as pods:
        yield pods


async def wait_state(pods: FakePods, cid: str, state: ContainerState) -> None:
    for _ in range(200):
        if pods.containers.status(cid).state is state:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{cid} never became {state}: {pods.containers.status(cid)}")


# -- containers ----------------------------------------------------------------------


async def test_create_start_stop_remove(pods):
    sid = await pods.run_pod()
    cid = await pods.create(sid)
    assert pods.containers.status(cid).state is ContainerState.CREATED
    assert pods.runtime.containers[cid].status is RuncStatus.CREATED
    await pods.containers.start(cid)
    assert pods.containers.status(cid).state is ContainerState.RUNNING
    await pods.containers.stop(cid, timeout=5)
    record = pods.containers.status(cid)
    assert (record.state, record.exit_code, record.reason) == (ContainerState.EXITED, 143, "Error")
    assert record.started_at <= record.finished_at
    await pods.containers.remove(cid)
    assert pods.store.get_container(cid) is None
    assert cid not in pods.runtime.containers
    assert not os.path.exists(pods.containers.bundle(cid))
    kinds = [kind for kind, oid in pods.events if oid == cid]
    assert kinds == [EventKind.CREATED, EventKind.STARTED, EventKind.STOPPED, EventKind.DELETED]


async def test_starting_twice_or_after_exit_is_a_failed_precondition(pods):
    sid = await pods.run_pod()
    cid = await pods.create(sid)
    await pods.containers.start(cid)
    with pytest.raises(FailedPrecondition, match="is running, not created"):
        await pods.containers.start(cid)
    await pods.containers.stop(cid, timeout=0)
    with pytest.raises(FailedPrecondition, match="is exited, not created"):
        await pods.containers.start(cid)


async def test_an_exit_is_recorded_from_the_exit_file(pods):
    sid = await pods.run_pod()
    cid = await pods.create(sid)
    await pods.containers.start(cid)
    pods.runtime.exit(cid, 0)
    await wait_state(pods, cid, ContainerState.EXITED)
    record = pods.containers.status(cid)
    assert (record.exit_code, record.reason) == (0, "Completed")


async def test_an_oom_kill_reads_as_oomkilled(pods):
    sid = await pods.run_pod()
    cid = await pods.create(sid)
    await pods.containers.start(cid)
    pods.runtime.exit(cid, 137, oom=True)
    await wait_state(pods, cid, ContainerState.EXITED)
    assert pods.containers.status(cid).reason == "OOMKilled"


async def test_a_stop_signal_that_is_ignored_escalates_to_sigkill(pods):
    pods.runtime.ignore_term = True
    sid = await pods.run_pod()
    cid = await pods.create(sid)
    await pods.containers.start(cid)
    await pods.containers.stop(cid, timeout=0.2)
    assert pods.containers.status(cid).exit_code == 128 + signal.SIGKILL


def _fail_staging(pods: FakePods, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event | None:
    """The second of two staged volumes cannot be bound (the first is, and must be undone)."""
    monkeypatch.setattr("agent.pods.mounts.recursive_readonly_supported", lambda: True)
    bind = pods.mounter.bind_special

    async def bind_special(source: str, target: str, **kwargs: Any) -> None:
        if target.endswith("/volumes/1"):
            raise FailedPrecondition("rro is not supported by this mount")
        await bind(source, target, **kwargs)

    monkeypatch.setattr(pods.mounter, "bind_special", bind_special)
    return None


def _fail_spec_write(pods: FakePods, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event | None:
    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("agent.pods.containers.atomic_write_json", no_space)
    return None


def _fail_runtime_create(pods: FakePods, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event | None:
    pods.runtime.fail_create = 'exec: "/nope": stat /nope: no such file or directory'
    return None


def _hang_runtime_create(pods: FakePods, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event | None:
    """runc create never returns: the test cancels the create (a client deadline) once
    the returned event says it is there."""
    create, reached = pods.runtime.create, asyncio.Event()

    async def hang(cid: str, bundle: str, options: CreateOptions) -> int:
        await create(cid, bundle, options)  # conmon's files exist: the undo must destroy them
        reached.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    monkeypatch.setattr(pods.runtime, "create", hang)
    return reached


@pytest.mark.parametrize(
    ("inject", "error", "message"),
    [
        (_fail_staging, FailedPrecondition, r"config\.mounts\[1\] /b: rro is not supported"),
        (_fail_spec_write, OSError, "No space left"),
        (_fail_runtime_create, CreateFailed, 'create container app: exec: "/nope"'),
        (_hang_runtime_create, asyncio.CancelledError, None),
    ],
    ids=["stage_mounts", "spec_write", "runtime_create", "cancelled"],
)
async def test_a_failed_create_leaves_nothing(pods, monkeypatch, tmp_path, inject, error, message):
    sid = await pods.run_pod()
    reached = inject(pods, monkeypatch)
    volumes = tuple(
        model.Mount(f"/{name}", str(tmp_path), readonly=True, recursive_read_only=True)
        for name in "ab"
    )
    config = model.ContainerConfig(
        name="app", attempt=0, image=IMAGE, command=("sleep",), mounts=volumes
    )
    pod_containers, first_call = dict(pods.runtime.containers), len(pods.runtime.calls)
    create = asyncio.ensure_future(pods.containers.create(sid, config))
    if reached is not None:
        await asyncio.wait_for(reached.wait(), 5)
        create.cancel()
    with pytest.raises(error, match=message) as raised:
        await create
    assert type(raised.value) is error
    assert pods.store.containers() == []
    assert not pods.store.image_in_use(cast(FakeImages, pods.containers._images).image.id)
    assert [n for n in os.listdir(pods.containers.state) if n != "_logs"] == []  # logs stay
    assert os.listdir(pods.containers.root) == []
    assert [c for c in pods.mounter.mounted if "/containers/" in c] == []
    assert pods.runtime.containers == pod_containers
    assert pods.containers.exits._exited == {}
    calls = pods.runtime.calls[first_call:]
    created = [cid for verb, cid in calls if verb == "create"]
    assert bool(created) is (error in (CreateFailed, asyncio.CancelledError))
    if created:  # the runtime was told to forget the half-made container (conmon's dirs)
        assert ("destroy", created[-1]) in calls


async def test_a_failed_start_is_a_start_error(pods):
    sid = await pods.run_pod()
    cid = await pods.create(sid)
    pods.runtime.fail_start = "permission denied"
    with pytest.raises(FailedPrecondition, match="permission denied"):
        await pods.containers.start(cid)
    record = pods.containers.status(cid)
    assert (record.state, record.reason, record.exit_code) == (
        ContainerState.EXITED,
        "StartError",
        128,
    )


async def test_a_dead_monitor_with_a_live_process_is_unknown(pods):
    sid = await pods.run_pod()
    cid = await pods.create(sid)
    await pods.containers.start(cid)
    pods.runtime.kill_monitor(cid)
    # The process still runs: stand in our own pid for it.
    pods.store.update_container(cid, lambda r: replace(r, pid=os.getpid()))
    assert pods.containers.status(cid).state is ContainerState.UNKNOWN


async def test_a_dead_monitor_and_a_gone_process_is_exited_255(pods):
    sid = await pods.run_pod()
    cid = await pods.create(sid)
    await pods.containers.start(cid)
    pods.runtime.kill_monitor(cid)
    record = pods.containers.status(cid)  # the fake pid is not alive
    assert (record.state, record.exit_code) == (ContainerState.EXITED, 255)
    assert "monitor (conmon) died" in record.message


async def test_a_list_after_draining_the_watcher_reads_only_announced_exit_files(pods):
    sid = await pods.run_pod()
    cids = [await pods.create(sid, f"c{i}") for i in range(3)]
    for cid in cids:
        await pods.containers.start(cid)
    read: list[str] = []
    exit_status = pods.runtime.exit_status

    def counted(cid: str) -> ExitStatus | None:
        read.append(cid)
        return exit_status(cid)

    pods.runtime.exit_status = counted
    pods.runtime.exit(cids[1], 7)
    # No await since the exit: the watcher's reader has not run, the drain takes the event.
    assert pods.watcher is not None
    pods.containers.exits.announced = pods.watcher.drain()
    listed = [pods.containers.status(cid, listing=True) for cid in cids]
    assert [r.state for r in listed] == [
        ContainerState.RUNNING,
        ContainerState.EXITED,
        ContainerState.RUNNING,
    ]
    assert listed[1].exit_code == 7
    assert read == [cids[1]]  # the running containers' exit files were not looked for
    read.clear()
    pods.containers.exits.announced = False  # no watcher: each list looks for every file
    [pods.containers.status(cid, listing=True) for cid in cids]
    assert sorted(read) == sorted([cids[0], cids[2]])


async def test_a_monitor_gone_after_writing_the_exit_file_is_a_real_exit_not_a_lost_one(pods):
    sid = await pods.run_pod()
    cid = await pods.create(sid)
    await pods.containers.start(cid)
    assert pods.watcher is not None
    pods.watcher.stop()  # the announcement is lost
    pods.containers.exits.announced = True
    pods.runtime.exit(cid, 3)
    pods.runtime.kill_monitor(cid)  # conmon ends once it has written the file
    record = pods.containers.status(cid, listing=True)
    assert (record.state, record.exit_code) == (ContainerState.EXITED, 3)


async def test_stop_after_the_monitor_died_records_a_kill(pods):
    sid = await pods.run_pod()
    cid = await pods.create(sid)
    await pods.containers.start(cid)
    pods.runtime.kill_monitor(cid)  # it will write no exit file
    pods.store.update_container(cid, lambda r: replace(r, pid=os.getpid()))
    pods.containers.exits.apply(cid)
    task = asyncio.ensure_future(pods.containers.stop(cid, timeout=0))
    await asyncio.wait_for(task, 40)
    record = pods.containers.status(cid)
    assert (record.state, record.exit_code) == (ContainerState.EXITED, 137)


async def test_stop_and_remove_of_unknown_ids_are_no_ops(pods):
    assert await pods.containers.stop("0" * 64, 1) is None
    assert await pods.containers.remove("0" * 64) is None
    with pytest.raises(NotFound):
        pods.containers.status("0" * 64)


# -- sandboxes -----------------------------------------------------------------------


async def test_a_sandbox_is_creating_then_ready_and_infra_exit_makes_it_notready(pods):
    sid = await pods.run_pod()
    assert pods.store.sandbox(sid).state is SandboxState.READY
    pods.runtime.exit(sid, 137)
    for _ in range(200):
        if pods.sandboxes.status(sid).state is SandboxState.NOTREADY:
            break
        await asyncio.sleep(0.01)
    assert pods.sandboxes.status(sid).state is SandboxState.NOTREADY
    assert "infra process exited" in pods.sandboxes.status(sid).message


async def test_a_failed_sandbox_is_undone(pods):
    pods.runtime.fail_create = "no infra"
    with pytest.raises(Exception, match="no infra"):
        await pods.run_pod()
    assert pods.store.sandboxes() == []
    assert pods.mounter.mounted == set()


# -- recovery ------------------------------------------------------------------------


async def restart(pods: FakePods) -> FakePods:
    """Forget the managers (the agent died) and build new ones on the same dirs."""
    await pods.containers.close()
    pods.close()
    again = build(pods.config, runtime=pods.runtime, watch=False)
    await again.recovery.run()
    return again


async def test_recovery_decisions(pods):
    sid = await pods.run_pod()
    running = await pods.create(sid, "running")
    await pods.containers.start(running)
    died_in_start = await pods.create(sid, "started-by-runc")
    vanished = await pods.create(sid, "vanished")
    await pods.containers.start(vanished)
    exited_while_down = await pods.create(sid, "exited")
    await pods.containers.start(exited_while_down)
    # What happened while the agent was down:
    await pods.runtime.start(died_in_start)  # runc started it; the record never heard
    del pods.runtime.containers[vanished]  # gone (a reboot, runc state lost)
    assert pods.watcher is not None
    pods.watcher.stop()  # the agent is down: nobody watches the exit files
    pods.watcher = None
    pods.runtime.exit(exited_while_down, 3)
    orphan = "f" * 64  # runc knows a container no record names
    await pods.runtime.create(orphan, pods.containers.bundle(running), _options())
    again = await restart(pods)
    try:
        states = {c.config.name: c for c in again.store.containers()}
        assert states["running"].state is ContainerState.RUNNING
        assert states["started-by-runc"].state is ContainerState.RUNNING
        assert (states["vanished"].state, states["vanished"].exit_code) == (
            ContainerState.EXITED,
            255,
        )
        assert (states["exited"].state, states["exited"].exit_code) == (ContainerState.EXITED, 3)
        assert orphan not in again.runtime.containers
    finally:
        await again.containers.close()
        again.close()


async def test_recovery_undoes_a_sandbox_left_creating(pods):
    sid = await pods.run_pod()
    pods.store.update_sandbox(sid, lambda r: replace(r, state=SandboxState.CREATING))
    again = await restart(pods)
    try:
        assert again.store.sandboxes() == []
        assert sid not in again.runtime.containers
    finally:
        await again.containers.close()
        again.close()


async def test_recovery_marks_a_ready_sandbox_without_infra_notready(pods):
    sid = await pods.run_pod()
    del pods.runtime.containers[sid]
    again = await restart(pods)
    try:
        record = again.store.sandbox(sid)
        assert record.state is SandboxState.NOTREADY
        assert "gone when the agent started" in record.message
    finally:
        await again.containers.close()
        again.close()


async def test_recovery_removes_container_files_without_a_record(pods):
    leftover = "e" * 64
    os.makedirs(os.path.join(pods.containers.state, leftover, "bundle"))
    os.makedirs(os.path.join(pods.containers.root, leftover, "upper"))
    again = await restart(pods)
    try:
        assert not os.path.exists(os.path.join(again.containers.state, leftover))
        assert not os.path.exists(os.path.join(again.containers.root, leftover))
        assert ("destroy", leftover) in again.runtime.calls
    finally:
        await again.containers.close()
        again.close()


def _options() -> CreateOptions:
    """A create's options, for a container made behind the agent's back."""
    return CreateOptions(log_path="/dev/null")


async def test_removal_does_not_wait_for_deleting_the_layer_and_recovery_empties_the_trash(pods):
    sid = await pods.run_pod()
    cid = await pods.create(sid)
    await pods.containers.remove(cid)
    assert not os.path.exists(os.path.join(pods.containers.root, cid))  # renamed at once
    await pods.containers.close()  # waits for the background deletion
    assert os.listdir(pods.containers.root) == []
    leftover = os.path.join(pods.containers.root, ".trash-" + "d" * 64 + "-0000")
    os.makedirs(os.path.join(leftover, "upper", "big"))
    again = await restart(pods)
    try:
        await again.containers.close()
        assert not os.path.exists(leftover)
    finally:
        again.close()
