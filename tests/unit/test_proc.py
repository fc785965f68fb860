"""``agent._util.proc`` against real small children (/bin/sh, sleep, python -c).

What its docstrings promise: ``run`` returns the output; a failure carries the exit
code and the *tail* of stderr; a timeout or a cancellation kills the child (and what
it forked) and reaps it, so no zombie is left; ``spawn`` passes exactly the fds it is
given and feeds stdin.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import subprocess
import sys
import threading
import time

import pytest

from agent._util.proc import CommandFailed, run, spawn
from agent.errors import DeadlineExceeded

PYTHON = sys.executable


def released(pid: int) -> bool:
    """True once the kernel let go of ``pid``: neither running nor a zombie."""
    try:
        os.kill(pid, 0)  # succeeds on a zombie too
    except ProcessLookupError:
        return True
    return False


def state(pid: int) -> str | None:
    """The process state letter from /proc (``Z`` for a zombie), None once it is gone."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rpartition(")")[2].split()[0]


async def read_pid(path: pathlib.Path, timeout: float = 10.0) -> int:
    """The pid a child wrote into ``path`` (it writes it with a newline once started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and (text := path.read_text()).endswith("\n"):
            return int(text)
        await asyncio.sleep(0.01)
    raise AssertionError(f"no pid in {path} after {timeout}s")


async def until_dead(pid: int, timeout: float = 5.0) -> str | None:
    """Wait for ``pid`` to stop running (gone, or a zombie of a parent other than us)."""
    deadline = time.monotonic() + timeout
    while True:
        current = state(pid)
        if current in (None, "Z") or time.monotonic() > deadline:
            return current
        await asyncio.sleep(0.01)


async def test_a_successful_run_returns_its_output():
    done = await run(["/bin/sh", "-c", "echo out; echo err >&2"], timeout=10)
    assert done.returncode == 0
    assert done.stdout == b"out\n"
    assert done.stderr == b"err\n"
    assert done.argv == ("/bin/sh", "-c", "echo out; echo err >&2")


async def test_a_failure_carries_the_exit_code_and_the_tail_of_stderr():
    script = (
        "import sys\n"
        "sys.stderr.write('the start\\n' + 'x' * 5000 + '\\nthe last words\\n')\n"
        "sys.exit(3)\n"
    )
    with pytest.raises(CommandFailed) as failed:
        await run([PYTHON, "-c", script], timeout=10)
    error = failed.value
    assert error.returncode == 3
    prefix = f"{os.path.basename(PYTHON)} exited with 3: "
    message = str(error)
    assert message.startswith(prefix)
    detail = message[len(prefix) :]
    assert detail.endswith("the last words")
    assert len(detail) == 2000  # cut to the tail ...
    assert "the start" not in detail  # ... so the beginning is gone
    assert error.stderr.startswith(b"the start")  # the whole stream stays on the error


async def test_a_failure_without_stderr_carries_stdout_and_check_false_returns_it():
    argv = ["/bin/sh", "-c", "echo only on stdout; exit 4"]
    with pytest.raises(CommandFailed, match=r"sh exited with 4: only on stdout$"):
        await run(argv, timeout=10)
    done = await run(argv, timeout=10, check=False)
    assert done.returncode == 4
    assert done.stdout == b"only on stdout\n"


async def test_a_timeout_kills_and_reaps_the_child_and_what_it_forked(tmp_path):
    child_file, grandchild_file = tmp_path / "child", tmp_path / "grandchild"
    script = f"echo $$ > {child_file}; sleep 60 & echo $! > {grandchild_file}; wait"
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=r"sh did not finish within 1s"):
        await run(["/bin/sh", "-c", script], timeout=1)
    assert time.monotonic() - started < 10
    child, grandchild = await read_pid(child_file), await read_pid(grandchild_file)
    assert released(child)  # killed and reaped, not a zombie
    assert state(child) is None
    # The grandchild is reparented, so its reaping is its new parent's: it is dead.
    assert await until_dead(grandchild) in (None, "Z")


async def test_cancelling_a_run_kills_and_reaps_the_child(tmp_path):
    pid_file = tmp_path / "pid"
    task = asyncio.ensure_future(
        run(["/bin/sh", "-c", f"echo $$ > {pid_file}; exec sleep 60"], timeout=60)
    )
    pid = await read_pid(pid_file)
    assert state(pid) not in (None, "Z")  # it really runs before the cancellation
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert state(pid) is None


async def test_cancelling_the_block_of_a_spawned_child_kills_and_reaps_it():
    child = await spawn(["sleep", "60"], stdout="null", stderr="null")

    async def wait_inside() -> None:
        async with child:
            await child.wait()

    task = asyncio.ensure_future(wait_inside())
    await asyncio.sleep(0.05)
    assert os.getsid(child.pid) == child.pid  # it leads its own session
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Killed (-9; asyncio says 255 when another loop's child watcher of this test process
    # reaped it first: the point here is that it is dead and reaped).
    assert child.returncode in (-9, 255)
    assert released(child.pid)


async def test_wait_with_a_timeout_kills_and_reaps():
    child = await spawn(["sleep", "60"], stdout="null", stderr="null")
    with pytest.raises(DeadlineExceeded, match=r"sleep did not finish within 0.2s"):
        await child.wait(timeout=0.2)
    # Killed (-9; asyncio says 255 when another loop's child watcher of this test process
    # reaped it first: the point here is that it is dead and reaped).
    assert child.returncode in (-9, 255)
    assert released(child.pid)


LIST_FDS_AND_WRITE = """
import os, sys
def is_open(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True
print(*[fd for fd in range(3, 1024) if is_open(fd)])
os.write(int(sys.argv[1]), b"through the passed pipe")
"""


async def test_spawn_passes_exactly_the_fds_it_is_given():
    passed_r, passed_w = os.pipe()
    other_r, other_w = os.pipe()
    os.set_inheritable(other_w, True)  # inheritable, yet not passed: it must stay behind
    try:
        child = await spawn(
            [PYTHON, "-I", "-c", LIST_FDS_AND_WRITE, str(passed_w)], pass_fds=(passed_w,)
        )
        async with child:
            listed = await child.stdout.read()
            assert await child.wait(timeout=10) == 0
        assert [int(fd) for fd in listed.split()] == [passed_w]  # past 0-2, only that one
        assert os.read(passed_r, 100) == b"through the passed pipe"
    finally:
        for fd in (passed_r, passed_w, other_r, other_w):
            os.close(fd)


async def test_spawn_feeds_stdin_while_it_runs_and_run_feeds_input():
    child = await spawn(["cat"], stdin="pipe")
    async with child:
        child.stdin.write(b"first line\n")
        await child.stdin.drain()
        assert await asyncio.wait_for(child.stdout.readline(), 10) == b"first line\n"
        child.stdin.write(b"second line\n")
        child.stdin.close()
        assert await child.stdout.read() == b"second line\n"
        assert await child.wait(timeout=10) == 0
    payload = os.urandom(1 << 20)  # more than a pipe holds: fed while read
    done = await run(["cat"], timeout=10, input=payload)
    assert done.stdout == payload


def our_children() -> set[int]:
    """The pids this test process has started and not yet reaped (zombies included)."""
    pids: set[int] = set()
    for task in pathlib.Path(f"/proc/{os.getpid()}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            pids.update(int(pid) for pid in (task / "children").read_text().split())
    return pids


@pytest.mark.parametrize("ticks", [0, 1, 2, 3, 5, 8])
async def test_a_spawn_cancelled_while_it_starts_leaves_no_process(ticks):
    """The fork happens on a spawn thread; a caller cancelled at any point of the
    start gets its cancellation only after the child is killed and reaped."""
    before = our_children()
    task = asyncio.ensure_future(spawn(["sleep", "60"], stdin="pipe"))
    for _ in range(ticks):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert our_children() == before


async def test_the_fork_and_exec_happen_off_the_event_loop(monkeypatch):
    """``vfork`` + ``execve`` hold the calling thread for about a millisecond: that
    thread is a spawn thread, never the loop's, so status calls go on meanwhile."""
    forked_on: list[int] = []
    real_popen = subprocess.Popen

    def recording_popen(*args, **kwargs):
        forked_on.append(threading.get_ident())
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", recording_popen)
    done = await run(["/bin/sh", "-c", "echo started"], timeout=10)
    assert done.stdout == b"started\n"
    assert len(forked_on) == 1
    assert forked_on[0] != threading.get_ident()
