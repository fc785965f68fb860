"""Third-party CDI hooks from a spec on disk, run by the real runc at every OCI stage.

A vendor's spec (``example.com/hooks=probe``) dropped into the running agent's
CDI spec directory binds a host directory into the container and adds one
``/bin/sh`` hook for each of createRuntime, createContainer, startContainer,
poststart and poststop. Each hook appends its stage and the mount namespace it
ran in to one log file; the container's own process appends a line too. The
container is requested by CDI name through the CRI (``ContainerConfig.CDI_devices``),
started, stopped and removed by a real agent, conmon and runc.

Where a hook runs decides where it can write. The runtime-namespace hooks
(createRuntime, poststart, poststop) and createContainer (container namespace,
but before pivot_root: the host's root is still reachable) write to the log's
host path; startContainer runs after pivot_root, in the container's root, so it
writes through the bind mount. Only the agent's own createContainer ldconfig hook
was run for real before (``test_gpu_runc``, ``test_gpu_containers``); the other
stages were checked against the OCI spec dict only (``tests/unit/test_cdi_edits``).

runc up to 1.4 runs poststart hooks at the end of ``runc create``, before
``runc start`` (opencontainers/runc#1710, moved by #5186): that order is
checked exactly; a runc that runs them after the process started may race
them with the startContainer hook, so the check is then looser.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import time
from typing import Any

import pytest

from agent.api.cri.runtime.v1 import api_pb2 as pb
from tests.integration.test_pods import environment, images  # noqa: F401

pytestmark = pytest.mark.integration

DEVICE = "example.com/hooks=probe"
IN_CONTAINER = "/hooklog"  # where the spec mounts the host's log dir
PATH_ENV = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"
CREATE_RUNTIME, CREATE_CONTAINER, START_CONTAINER = (
    "createRuntime",
    "createContainer",
    "startContainer",
)
POSTSTART, POSTSTOP, PROCESS = "poststart", "poststop", "process"
#: The container's command: one log line from its own mount namespace, then it stays up.
COMMAND = (
    f'echo "{PROCESS} $(busybox readlink /proc/self/ns/mnt)" >> {IN_CONTAINER}/stages; '
    "exec sleep 1000"
)


def hook(stage: str, log: str, readlink: str = "readlink") -> dict[str, Any]:
    """``/bin/sh -c 'echo "<stage> <mnt ns>" >> <log>'`` at ``stage``."""
    line = f'echo "{stage} $({readlink} /proc/self/ns/mnt)" >> {log}'
    return {
        "hookName": stage,
        "path": "/bin/sh",
        "args": ["sh", "-c", line],
        "env": [PATH_ENV],
        "timeout": 10,
    }


def write_spec(spec_dir: str, log_dir: str) -> str:
    host_log = os.path.join(log_dir, "stages")
    spec = {
        "cdiVersion": "0.6.0",
        "kind": "example.com/hooks",
        "devices": [
            {
                "name": "probe",
                "containerEdits": {
                    "mounts": [
                        {
                            "hostPath": log_dir,
                            "containerPath": IN_CONTAINER,
                            "options": ["rbind", "rw"],
                        }
                    ],
                    "hooks": [
                        hook(CREATE_RUNTIME, host_log),
                        hook(CREATE_CONTAINER, host_log),  # before pivot_root: host paths
                        # After pivot_root: resolved and run in the container's root (busybox).
                        hook(START_CONTAINER, f"{IN_CONTAINER}/stages", "busybox readlink"),
                        hook(POSTSTART, host_log),
                        hook(POSTSTOP, host_log),
                    ],
                },
            }
        ],
    }
    os.makedirs(spec_dir, exist_ok=True)
    path = os.path.join(spec_dir, "example-hooks.json")
    tmp = os.path.join(spec_dir, ".example-hooks.json.tmp")  # hidden: the registry skips it
    with open(tmp, "w") as f:
        json.dump(spec, f)
    os.replace(tmp, path)
    return host_log


def logged(log: str) -> list[tuple[str, str]]:
    """The log's ``(stage, mount namespace)`` lines, in order."""
    try:
        with open(log) as f:
            return [(line.split()[0], line.split()[1]) for line in f if line.strip()]
    except FileNotFoundError:
        return []


async def wait_for(log: str, stage: str, timeout: float = 20) -> list[tuple[str, str]]:
    deadline = time.monotonic() + timeout
    while True:
        lines = logged(log)
        if any(s == stage for s, _ in lines):
            return lines
        assert time.monotonic() < deadline, f"no {stage} line in {lines}"
        await asyncio.sleep(0.05)


async def test_cdi_hooks_from_a_spec_on_disk_run_in_runc_at_every_stage(short_dir, images):  # noqa: F811
    log_dir = os.path.join(short_dir, "hooklog")
    os.makedirs(log_dir)
    host_ns = os.readlink("/proc/self/ns/mnt")  # the agent runs in this process: runc's too
    async with environment(short_dir, images, **{"gpu.backend": "none"}) as env:
        # Dropped into the running agent's lowest-priority dir, as a vendor's installer would.
        log = write_spec(env.agent.config.gpu.cdi_spec_dirs[0], log_dir)
        sid = await env.run_pod()
        config = env.container_config(
            "probe", "sh", "-c", COMMAND, CDI_devices=[pb.CDIDevice(name=DEVICE)]
        )
        cid = await env.create(sid, config)
        created = [s for s, _ in logged(log)]  # runc create has returned
        assert created[:2] == [CREATE_RUNTIME, CREATE_CONTAINER], created
        assert created[2:] in ([], [POSTSTART]), created
        poststart_at_create = created[2:] == [POSTSTART]

        await env.start(cid)
        # The startContainer hook runs in the container's init just before its exec, so it
        # may finish after StartContainer returns; the process's own line comes after it.
        await wait_for(log, PROCESS)
        if not poststart_at_create:
            await wait_for(log, POSTSTART)
        await env.cri.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
        await env.cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
        await env.remove_pod(sid)
        lines = logged(log)

    stages = [s for s, _ in lines]
    counts = collections.Counter(stages)
    assert all(n == 1 for n in counts.values()), stages
    assert stages[:2] == [CREATE_RUNTIME, CREATE_CONTAINER], stages
    assert stages[-1] == POSTSTOP, stages  # on runc delete, after the process is gone
    assert set(stages[2:-1]) == {POSTSTART, START_CONTAINER, PROCESS}, stages
    assert stages.index(START_CONTAINER) < stages.index(PROCESS), stages
    if poststart_at_create:  # runc <= 1.4: the whole order is fixed
        assert stages == [
            CREATE_RUNTIME,
            CREATE_CONTAINER,
            POSTSTART,
            START_CONTAINER,
            PROCESS,
            POSTSTOP,
        ]
    # Where each ran: the runtime's namespace, or the container's (the process's own).
    ns = dict(lines)
    assert ns[PROCESS] != host_ns
    assert {s: ns[s] for s in (CREATE_RUNTIME, POSTSTART, POSTSTOP)} == dict.fromkeys(
        (CREATE_RUNTIME, POSTSTART, POSTSTOP), host_ns
    ), lines
    assert ns[CREATE_CONTAINER] == ns[START_CONTAINER] == ns[PROCESS], lines
