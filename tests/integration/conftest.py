"""Integration fixtures: a real registry, and real agents talking CRI over a socket."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from agent.app import Agent
from agent.ctl.client import CriClient
from tests.conftest import make_config
from tests.support.push import RegistryClient
from tests.support.registry import Registry, running_registry

StartAgent = Callable[..., Awaitable[Agent]]


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
