"""Integration fixtures: a real registry, real agents over CRI, another runtime's pod."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from agent.app import Agent
from agent.ctl.client import CriClient
from tests import leaks
from tests.conftest import make_config, run_marks
from tests.support.foreign_pod import ForeignPod
from tests.support.push import RegistryClient
from tests.support.registry import Registry, running_registry

StartAgent = Callable[..., Awaitable[Agent]]


@pytest.fixture(scope="package")
def foreign_pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForeignPod]:
    """Another runtime's pod (not the agent's), there for all integration tests (checked
    when they end, not after the unit tests); it must survive.

    The suite runs on nodes where other runtimes have pods: at the end the pod must
    still be running with its netns, veth and iptables chain, and the leak check
    must not count any of it (it carries none of the run's marks).
    """
    pod = ForeignPod()
    pod.start()
    problems = []
    try:
        yield pod
        problems += pod.problems()
        problems += [
            f"the leak check counts it: {item}"
            for item in pod.attributed(leaks.snapshot(run_marks(tmp_path_factory)))
        ]
    finally:
        pod.remove()
    problems += [f"left after removal: {item}" for item in pod.leftovers()]
    if problems:
        pytest.fail("the foreign pod was touched:\n  " + "\n  ".join(problems), pytrace=False)


@pytest.fixture(autouse=True)
def _foreign_pod_stays(foreign_pod: ForeignPod) -> None:
    """Every integration test runs beside the foreign pod (set up once, on the first)."""


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """One plain-HTTP registry on 127.0.0.1 for the whole run."""
    with running_registry(tmp_path_factory.mktemp("registry")) as registry:
        yield registry


@pytest.fixture(scope="session")
def pusher(registry: Registry) -> RegistryClient:
    return RegistryClient(registry.url)


@pytest.fixture
async def start_agent(short_dir: str) -> AsyncIterator[StartAgent]:
    """Start agents rooted in a temp dir; ``**overrides`` are dotted config keys."""
    agents: list[Agent] = []
    count = 0

    async def start(**overrides: Any) -> Agent:
        nonlocal count
        count += 1
        base = short_dir if count == 1 else f"{short_dir}/{count}"
        os.makedirs(base, exist_ok=True)
        values = {"image.download_part_mb": 1, "image.pull_progress_timeout_seconds": 20}
        values.update(overrides)
        agent = Agent(make_config(base, **values))
        await agent.start()
        agents.append(agent)
        return agent

    yield start
    for agent in reversed(agents):
        with contextlib.suppress(Exception):
            await agent.stop(grace=0)


@pytest.fixture
async def agent(start_agent: StartAgent) -> Agent:
    return await start_agent()


@pytest.fixture
async def cri(agent: Agent) -> AsyncIterator[CriClient]:
    async with CriClient(agent.socket_path, timeout=60) as client:
        yield client
