"""How ``ConmonRuntime`` reads a failed runc/crun verb: "gone" only when ``state`` says so.

A fake runtime binary answers each verb from files beside it (``<verb>.err`` makes it
fail with that stderr), so the cases are the runtimes' own words (crun 1.8, runc 1.1).
"""

from __future__ import annotations

import json
import os
import stat

import grpc
import pytest

from agent._util.proc import CommandFailed
from agent.errors import AgentError, NotFound
from agent.oci.runc import ConmonRuntime, _exec_failure_code

FAKE = """#!/bin/sh
# argv: --root ROOT VERB ...; stdin is read so that update's input never blocks
here=$(dirname "$0")
verb=$3
echo "$@" >> "$here/calls"
[ "$verb" = update ] && cat > /dev/null
if [ -f "$here/$verb.err" ]; then cat "$here/$verb.err" >&2; exit 1; fi
[ -f "$here/$verb.out" ] && cat "$here/$verb.out"
exit 0
"""

CID = "c1"
CRUN_CGROUP_FILE = "opening file `hugetlb.3MB.max` for writing: No such file or directory"


class Fake:
    def __init__(self, tmp_path) -> None:
        self.dir = tmp_path / "bin"
        self.dir.mkdir()
        binary = self.dir / "crun"
        binary.write_text(FAKE)
        binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
        self.root = tmp_path / "root"
        self.runtime = ConmonRuntime(
            name="crun",
            binary=str(binary),
            root=str(self.root),
            conmon_binary="/bin/false",
            state_dir=str(tmp_path / "state"),
            timeout=10,
        )

    def fails(self, verb: str, stderr: str) -> None:
        (self.dir / f"{verb}.err").write_text(stderr + "\n")

    def running(self) -> None:
        """The runtime knows the container (its state dir exists) and it runs."""
        os.makedirs(self.root / CID, exist_ok=True)
        (self.dir / "state.out").write_text(json.dumps({"status": "running", "pid": 42}))

    def gone(self, *, crun: bool = True) -> None:
        """The runtime has no such container, in crun's words or runc's."""
        if crun:
            self.fails(
                "state",
                f"error opening file `{self.root}/{CID}/status`: No such file or directory",
            )
        else:
            self.fails("state", 'time="x" level=error msg="container does not exist"')

    def verbs(self) -> list[str]:
        return [line.split()[2] for line in (self.dir / "calls").read_text().splitlines()]


@pytest.fixture
def fake(tmp_path) -> Fake:
    return Fake(tmp_path)


async def test_a_missing_cgroup_file_on_a_running_container_is_not_gone(fake):
    fake.running()
    fake.fails("update", CRUN_CGROUP_FILE)
    with pytest.raises(AgentError) as info:
        await fake.runtime.update(CID, {"hugepageLimits": [{"pageSize": "3MB", "limit": 1}]})
    assert not isinstance(info.value, NotFound)
    assert info.value.grpc_code is grpc.StatusCode.UNKNOWN
    assert "hugetlb.3MB.max" in str(info.value)
    assert fake.verbs() == ["update", "state"]


@pytest.mark.parametrize("crun", [True, False])
async def test_update_of_a_container_state_calls_gone_is_not_found(fake, crun):
    fake.gone(crun=crun)
    fake.fails("update", f"error opening file `{fake.root}/{CID}/status`: No such file")
    with pytest.raises(NotFound):
        await fake.runtime.update(CID, {})


async def test_kill_failing_with_no_such_file_on_a_running_container_raises(fake):
    fake.running()
    fake.fails("kill", "open `/sys/fs/cgroup/x/cgroup.procs`: No such file or directory")
    with pytest.raises(CommandFailed):
        await fake.runtime.kill(CID)


@pytest.mark.parametrize("crun", [True, False])
async def test_kill_of_a_gone_container_is_done(fake, crun):
    fake.gone(crun=crun)
    fake.fails("kill", f"error opening file `{fake.root}/{CID}/status`: No such file")
    await fake.runtime.kill(CID)
    assert fake.verbs() == ["kill", "state"]


async def test_kill_of_a_stopped_container_is_done(fake):
    os.makedirs(fake.root / CID)
    (fake.dir / "state.out").write_text(json.dumps({"status": "stopped", "pid": 0}))
    fake.fails("kill", "kill container: No such process")
    await fake.runtime.kill(CID)
    assert fake.verbs() == ["kill", "state"]


async def test_kill_saying_not_running_asks_nothing_more(fake):
    fake.fails("kill", 'time="x" level=error msg="container not running"')
    await fake.runtime.kill(CID)
    assert fake.verbs() == ["kill"]


async def test_delete_failing_with_no_such_file_on_a_live_container_raises(fake):
    fake.running()
    fake.fails("delete", "rmdir `/sys/fs/cgroup/x`: No such file or directory")
    with pytest.raises(CommandFailed):
        await fake.runtime.destroy(CID)


async def test_delete_of_a_gone_container_is_done(fake):
    fake.gone()
    fake.fails("delete", f"cannot open directory '{fake.root}/{CID}': No such file or directory")
    await fake.runtime.destroy(CID)
    assert fake.verbs() == ["delete", "state"]


async def test_state_reads_crun_s_missing_state_file_as_gone(fake):
    fake.gone()
    assert await fake.runtime.state(CID) is None


async def test_state_with_a_missing_file_elsewhere_is_an_error_while_the_state_dir_exists(fake):
    os.makedirs(fake.root / CID)
    fake.fails("state", "open `/sys/fs/cgroup/x/cgroup.freeze`: No such file or directory")
    with pytest.raises(CommandFailed):
        await fake.runtime.state(CID)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (
            'exec failed: unable to start container process: exec: "nosuch": '
            "executable file not found in $PATH",
            127,
        ),
        ('exec failed: unable to start container process: exec: "/adir": permission denied', 126),
        ("executable file `nosuch` not found in $PATH: No such file or directory", 127),
        ("open executable: Permission denied", 126),
        ("open executable: Operation not permitted", 126),  # crun: the command is a directory
        ("chdir `/nodir`: No such file or directory", 127),
    ],
)
def test_exec_failure_codes_as_a_shell_gives_them(message, code):
    assert _exec_failure_code(message) == code
