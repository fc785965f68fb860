"""``model-agent ctl`` as crictl users drive it: the process, against a real agent.

Each test gets an agent with its own bridge, subnet and cgroup parent
(``test_pods.environment``) and runs ``model-agent ctl`` as a subprocess on its
socket: pods and containers from crictl-format config files, the listing and
inspection verbs in every output format, updates checked in the cgroup,
logs with ``--since``/``--timestamps``/``--previous``, events, removal with
``-a``/``-f`` and ``rmi --prune``, and ctl's crictl-style config file.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from agent.api.cri.runtime.v1 import api_pb2 as pb
from tests.integration.test_pods import Env, environment, images  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

CTL = [sys.executable, "-m", "agent", "ctl"]
ID = re.compile(r"^[0-9a-f]{64}$")
#: A line gRPC's C core logs itself (glog: severity letter, MMDD, time, thread id).
GRPC_CORE_LOG = re.compile(rb"^[EWIF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ ")
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)"


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
async def env(short_dir, images) -> AsyncIterator[Env]:  # noqa: F811  (the fixture above)
    async with environment(short_dir, images) as env:
        yield env


def _interruptible() -> None:
    """Ctrl-C as a user's terminal sends it: a suite started in the background by a shell
    without job control inherits SIGINT ignored, and so would the client."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _environ(env: Env, **extra: str) -> dict[str, str]:
    environ = dict(os.environ)
    config = f"{env.base}/agent.toml"
    with open(config, "a"):
        pass  # the host's /etc/model-agent files never leak in
    environ.update(
        MODEL_AGENT_CONFIG=config, MODEL_AGENT_CTL_CONFIG=f"{env.base}/ctl.yaml", **extra
    )
    return environ


async def ctl(
    env: Env,
    *args: str,
    ok: bool = True,
    socket: bool = True,
    environ: dict[str, str] | None = None,
) -> Done:
    argv = [*CTL, *(["--socket", env.agent.socket_path] if socket else []), *args]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_environ(env, **(environ or {})),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    done = Done(proc.returncode or 0, out.decode(), err.decode())
    if ok:
        assert done.returncode == 0, f"ctl {' '.join(args)}: {done.stderr}"
    return done


def write_configs(
    env: Env, name: str, command: list[str], *, attempt: int = 0, image: str = "busybox"
) -> tuple[str, str]:
    """A pod-config (YAML) and container-config (JSON) in crictl's format."""
    pod = {
        "metadata": {"name": name, "namespace": "ctl-test", "attempt": 0},
        "hostname": name,
        "log_directory": f"{env.base}/logs/{name}",
        "linux": {"cgroup_parent": env.cgroup_parent},
        "labels": {"app": name},
    }
    container = {
        "metadata": {"name": "app", "attempt": attempt},
        "image": {"image": env.images.get(image, image)},
        "command": command,
        "log_path": f"app/{attempt}.log",
        "linux": {},
    }
    pod_path = f"{env.base}/{name}-pod.yaml"
    container_path = f"{env.base}/{name}-container-{attempt}.json"
    with open(pod_path, "w") as f:
        yaml.safe_dump(pod, f)
    with open(container_path, "w") as f:
        json.dump(container, f, indent="\t")  # tabs: JSON, not YAML
    return pod_path, container_path


def json_stream(text: str) -> list[dict[str, Any]]:
    decoder, docs, pos = json.JSONDecoder(), [], 0
    while pos < len(text.rstrip()):
        doc, pos = decoder.raw_decode(text, pos)
        docs.append(doc)
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return docs


def cgroup_file(env: Env, controller: str, cid: str, v1: str, v2: str) -> str:
    path = f"/sys/fs/cgroup/{controller}{env.cgroup_parent}/{cid}/{v1}"
    return path if os.path.exists(path) else f"/sys/fs/cgroup{env.cgroup_parent}/{cid}/{v2}"


async def wait_state(env: Env, cid: str, state: str) -> dict[str, Any]:
    for _ in range(200):
        doc = json.loads((await ctl(env, "inspect", "-q", cid)).stdout)
        if doc["status"]["state"] == state:
            return doc
        await asyncio.sleep(0.1)
    raise AssertionError(f"{cid} never reached {state}")


async def test_pod_and_container_lifecycle_from_config_files(env):
    # events first, so that the container's whole life is in the stream
    events = await asyncio.create_subprocess_exec(
        *CTL, "--socket", env.agent.socket_path, "-D", "events",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_environ(env),
        preexec_fn=_interruptible,
    )  # fmt: skip
    assert events.stderr is not None and events.stdout is not None
    try:
        # -D logs calls; gRPC's C core may log a line of its own first (glog format)
        line = await asyncio.wait_for(events.stderr.readline(), 30)
        while GRPC_CORE_LOG.match(line):
            line = await asyncio.wait_for(events.stderr.readline(), 30)
        assert b"/runtime.v1.RuntimeService/GetContainerEvents request" in line
        pod_path, container_path = write_configs(
            env, "ctl-web", ["sh", "-c", "echo one; echo two >&2; exec sleep 1000"]
        )
        pod = (await ctl(env, "runp", pod_path)).stdout.strip()
        assert ID.match(pod)
        assert (await ctl(env, "pods", "-q")).stdout.split() == [pod]
        listed = yaml.safe_load((await ctl(env, "pods", "-o", "yaml")).stdout)
        assert listed["items"][0]["metadata"]["name"] == "ctl-web"
        table = (await ctl(env, "pods", "--name", "^ctl-w")).stdout.splitlines()
        header = "POD ID  CREATED  STATE  NAME  NAMESPACE  ATTEMPT  RUNTIME"
        assert table[0].split() == header.split()
        assert pod[:13] in table[1] and "Ready" in table[1] and "ctl-test" in table[1]

        cid = (await ctl(env, "create", pod, container_path, pod_path)).stdout.strip()
        assert ID.match(cid)
        created = json.loads((await ctl(env, "ps", "-o", "json", "--state", "created")).stdout)
        assert [c["id"] for c in created["containers"]] == [cid]
        assert created["containers"][0]["podSandboxId"] == pod  # crictl's camelCase JSON
        assert (await ctl(env, "ps", "-q")).stdout == ""  # running ones only
        assert (await ctl(env, "start", cid)).stdout.strip() == cid
        assert (await ctl(env, "ps", "-q")).stdout.split() == [cid]
        ps = (await ctl(env, "ps")).stdout.splitlines()
        assert ps[0].startswith("CONTAINER") and ps[0].rstrip().endswith("NAMESPACE")
        assert cid[:13] in ps[1] and "Running" in ps[1] and pod[:13] in ps[1]

        # update: the limits land in the container's cgroup and in its status
        updated = await ctl(env, "update", "--memory", "96Mi", "--cpu-share", "256", cid)
        assert updated.stdout.strip() == cid
        memory = cgroup_file(env, "memory", cid, "memory.limit_in_bytes", "memory.max")
        with open(memory) as f:
            assert int(f.read()) == 96 << 20
        status = await wait_state(env, cid, "CONTAINER_RUNNING")
        assert status["status"]["resources"]["linux"]["memoryLimitInBytes"] == str(96 << 20)
        assert status["status"]["startedAt"] != "0001-01-01T00:00:00Z"

        # logs: both streams, --timestamps, --since
        for _ in range(100):
            logs = await ctl(env, "logs", cid)
            if "two" in logs.stderr:
                break
            await asyncio.sleep(0.1)
        assert (logs.stdout, logs.stderr) == ("one\n", "two\n")
        stamped = await ctl(env, "logs", "--timestamps", cid)
        assert re.fullmatch(STAMP + r" one\n", stamped.stdout), stamped.stdout
        assert (await ctl(env, "logs", "--since", "1h", cid)).stdout == "one\n"
        later = await ctl(env, "logs", "--since", "2999-01-01T00:00:00Z", cid)
        assert (later.stdout, later.stderr) == ("", "")
        bad = await ctl(env, "logs", "--since", "soon", cid, ok=False)
        assert bad.returncode == 2 and "neither a duration" in bad.stderr
        none = await ctl(env, "logs", "--previous", cid, ok=False)
        assert none.returncode == 1 and "previous terminated container app not found" in none.stderr

        # usage and filesystem verbs
        statsp = (await ctl(env, "statsp", "-s", "0.3", pod)).stdout.splitlines()
        assert statsp[0].split() == ["POD", "POD", "ID", "CPU", "%", "MEM"]
        assert statsp[1].split()[:2] == ["ctl-web", pod[:13]]
        stats = json.loads((await ctl(env, "statsp", "-o", "json")).stdout)
        assert [s["attributes"]["id"] for s in stats["stats"]] == [pod]
        metrics = json.loads((await ctl(env, "metricsp")).stdout)
        assert pod in [m["podSandboxId"] for m in metrics["podMetrics"]]
        descriptors = yaml.safe_load((await ctl(env, "metricdescs", "-o", "yaml")).stdout)
        names = {d["name"] for d in descriptors["descriptors"]}
        assert "container_memory_working_set_bytes" in names
        fs = json.loads((await ctl(env, "imagefsinfo")).stdout)
        assert fs["status"]["imageFilesystems"][0]["fsId"]["mountpoint"].startswith(env.base)
        assert "Image Filesystem" in (await ctl(env, "imagefsinfo", "-o", "table")).stdout

        # rmi --prune keeps the image in use, removes the unused one
        await ctl(env, "pull", env.images["model"])
        busybox = json.loads((await ctl(env, "inspecti", env.images["busybox"])).stdout)
        pruned = await ctl(env, "rmi", "--prune")
        assert pruned.stdout.splitlines() == [f"Deleted: {env.images['model']}"]
        assert (await ctl(env, "images", "-q")).stdout.split() == [busybox["status"]["id"]]

        # rm / rmp refuse running things unless -f; -f stops first; rm removes the log
        log_path = status["status"]["logPath"]
        refused = await ctl(env, "rm", cid, ok=False)
        assert refused.returncode == 1 and "is running, please stop it first" in refused.stderr
        assert (await ctl(env, "rm", "-f", cid)).stdout.split() == [cid, cid]  # stop, remove
        assert not os.path.exists(log_path)
        refused = await ctl(env, "rmp", pod, ok=False)
        assert "is running, please stop it first" in refused.stderr
        removed = await ctl(env, "rmp", "-f", pod)
        assert removed.stdout.splitlines() == [f"Stopped sandbox {pod}", f"Removed sandbox {pod}"]
        assert (await ctl(env, "pods", "-q")).stdout == ""
    finally:
        if events.returncode is None:
            events.send_signal(signal.SIGINT)
        streamed, _ = await asyncio.wait_for(events.communicate(), 30)
    assert events.returncode == 130
    mine = [e for e in json_stream(streamed.decode()) if e["containerId"] == cid]
    assert [e["containerEventType"] for e in mine] == [
        "CONTAINER_CREATED_EVENT",
        "CONTAINER_STARTED_EVENT",
        "CONTAINER_STOPPED_EVENT",
        "CONTAINER_DELETED_EVENT",
    ]


async def test_run_previous_logs_and_remove_all(env):
    pod_path, first = write_configs(env, "ctl-job", ["echo", "attempt-zero"])
    _, second = write_configs(env, "ctl-job", ["echo", "attempt-one"], attempt=1)
    cid0 = (await ctl(env, "run", first, pod_path)).stdout.strip()
    assert ID.match(cid0)
    doc = await wait_state(env, cid0, "CONTAINER_EXITED")
    pod = json.loads((await ctl(env, "pods", "-o", "json")).stdout)["items"][0]["id"]
    assert doc["status"]["finishedAt"] != "0001-01-01T00:00:00Z"

    cid1 = (await ctl(env, "create", "--no-pull", pod, second, pod_path)).stdout.strip()
    await ctl(env, "start", cid1)
    await wait_state(env, cid1, "CONTAINER_EXITED")
    assert (await ctl(env, "logs", cid1)).stdout == "attempt-one\n"
    assert (await ctl(env, "logs", "--previous", cid1)).stdout == "attempt-zero\n"
    followed = await ctl(env, "logs", "-f", cid1)  # returns: the container is not running
    assert followed.stdout == "attempt-one\n"
    latest = (await ctl(env, "ps", "-l", "-q")).stdout.split()
    assert latest == [cid1]
    assert sorted((await ctl(env, "ps", "-a", "-q")).stdout.split()) == sorted([cid0, cid1])

    removed = await ctl(env, "rm", "-a")
    assert sorted(removed.stdout.split()) == sorted([cid0, cid1])
    assert (await ctl(env, "ps", "-a", "-q")).stdout == ""
    await ctl(env, "rmp", "-a", "-f")
    assert (await ctl(env, "pods", "-q")).stdout == ""


async def test_failed_run_leaves_no_pod(env):
    pod_path, container = write_configs(env, "ctl-bad", ["true"], image="127.0.0.1:1/none:v1")
    failed = await ctl(env, "run", "--no-pull", container, pod_path, ok=False)
    assert failed.returncode == 1
    assert (await ctl(env, "pods", "-q")).stdout == ""  # the pod it made was removed
    broken = f"{env.base}/broken.json"
    with open(broken, "w") as f:
        f.write('{"metadata": {"name": "x"}, "imagee": {}}')
    refused = await ctl(env, "run", broken, pod_path, ok=False)
    assert refused.returncode == 2 and "imagee" in refused.stderr
    listed = await env.cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest())
    assert list(listed.items) == []  # nothing was created for the bad file


async def test_config_file_sets_the_endpoint_timeout_and_debug(env):
    # without --socket the agent's own config names a socket that does not exist
    environ = {"MODEL_AGENT_SOCKET": f"{env.base}/absent.sock"}
    missing = await ctl(env, "-t", "2", "version", socket=False, ok=False, environ=environ)
    assert missing.returncode == 1 and "is model-agent running?" in missing.stderr
    endpoint = f"unix://{env.agent.socket_path}"
    await ctl(env, "config", "--set", f"runtime-endpoint={endpoint},timeout=7", socket=False)
    await ctl(env, "config", "debug", "true", socket=False)
    assert (await ctl(env, "config", "--get", "timeout", socket=False)).stdout == "7\n"
    listed = (await ctl(env, "config", "--list", socket=False)).stdout.splitlines()
    assert listed[0].split() == ["KEY", "VALUE"]
    assert listed[1].split() == ["runtime-endpoint", endpoint]
    with open(f"{env.base}/ctl.yaml") as f:
        assert yaml.safe_load(f) == {
            "runtime-endpoint": endpoint,
            "image-endpoint": "",
            "timeout": 7,
            "debug": True,
            "pull-image-on-create": False,
            "disable-pull-on-run": False,
        }
    version = await ctl(env, "version", socket=False, environ=environ)
    assert "RuntimeName:  model-agent" in version.stdout
    assert "DEBU /runtime.v1.RuntimeService/Version request" in version.stderr
    bad = await ctl(env, "config", "--set", "colour=blue", socket=False, ok=False)
    assert bad.returncode == 2 and "no configuration option named colour" in bad.stderr
