"""The composition root: builds every part explicitly, recovers, serves, stops.

Start order matters and is the contract with the kubelet:

1. create the root and state dirs and lock the state dir (one agent per node);
2. open the metadata database (migrating its schema);
3. bind the CRI socket: from here ``Version`` and ``Status`` answer, every
   other RPC answers ``UNAVAILABLE`` ("recovering");
4. start the metrics endpoint and follow container events for the runtime metrics;
5. run the recovery steps (GPUs, images, pods and containers reconciled with
   disk and with conmon's exit files, then the kubelet's GPU plugins: the DRA
   driver and device plugin sockets, and the GPU events the metrics count), then
   mark the agent ready and tell systemd (``READY=1`` via sd_notify, when
   ``$NOTIFY_SOCKET`` is set).

Stopping reverses it. Containers are never stopped by stopping the agent:
conmon keeps them running and the next start re-adopts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry

from agent import __version__
from agent._util.fs import ensure_dir
from agent._util.sdnotify import Notifier
from agent.config import Config
from agent.cri import CriServer, ImageService, RpcInterceptor, RuntimeService
from agent.db import MetadataDB, open_database
from agent.errors import FailedPrecondition
from agent.gpu import GpuService, KubeletPlugins
from agent.health import NodeHealth
from agent.images import ImageManager
from agent.metrics import MetricsServer, NodeMetrics, PullMetrics, RpcMetrics, RuntimeMetrics
from agent.pods import PodService, Selector
from agent.streaming import StreamingServer, StreamingTimeouts

__all__ = ["Agent"]

log = logging.getLogger(__name__)

RecoveryStep = Callable[[], Awaitable[None]]


class Agent:
    """One running model-agent. ``start()``, then ``stop()``; or ``serve()``."""

    def __init__(self, config: Config, *, health: NodeHealth | None = None) -> None:
        self.config = config
        self.ready = asyncio.Event()
        self.registry = CollectorRegistry(auto_describe=True)
        self.metrics = RpcMetrics(self.registry, __version__)
        self.pull_metrics = PullMetrics(self.registry)
        self.runtime_metrics = RuntimeMetrics(self.registry)
        self.node_metrics: NodeMetrics | None = None
        self._metrics_events: asyncio.Task[None] | None = None
        self.health = health or NodeHealth(
            config, own_conf_dir=os.path.join(config.agent.root_dir, "cni", "net.d")
        )
        self.socket_path = config.socket_path
        self.db: MetadataDB | None = None
        self.images: ImageManager | None = None
        self.pods: PodService | None = None
        self.gpu = GpuService(config.gpu)
        self._gpu_refresh: asyncio.Task[None] | None = None
        self.kubelet_plugins: KubeletPlugins | None = None
        self.cri: CriServer | None = None
        self.streaming: StreamingServer | None = None
        self.metrics_server: MetricsServer | None = None
        #: Run in order before the agent reports ready, after the agent's own steps.
        self.recovery_steps: list[tuple[str, RecoveryStep]] = []
        self._lock_fd: int | None = None
        self.notifier = Notifier()  # sd_notify to $NOTIFY_SOCKET; a no-op without it

    def _build(self, db: MetadataDB) -> CriServer:
        """Create the subsystems over the open database, and the server over them."""
        images = self.images = ImageManager(self.config, db, self.pull_metrics)
        plugins = self.kubelet_plugins = KubeletPlugins(
            self.config.gpu, gpu=self.gpu, db=db, state_dir=self.config.agent.state_dir
        )
        pods = self.pods = PodService(
            self.config,
            db,
            images,
            gpu=self.gpu,
            # The device plugin's env fallback: the GPUs its token in the env names.
            allocated=lambda c: plugins.allocated(dict(c.envs), c.labels),
        )
        self.node_metrics = NodeMetrics(
            self.registry,
            self.config.metrics,
            pods=pods,
            gpu=self.gpu,
            db=db,
            image_usage=lambda: (images.image_fs_usage().used_bytes, len(images.all())),
            health=plugins.health,
        )
        self.recovery_steps[:0] = [
            ("gpus", self._start_gpus),
            ("images", images.recover),
            ("pods", pods.start),
            ("kubelet GPU plugins", plugins.start),
            ("GPU events for the metrics", self._follow_gpu_events),
        ]
        # RPCs a servicer does not define yet are answered UNIMPLEMENTED by the
        # interceptor; the generated stubs declare every RPC abstract.
        streaming = self.streaming = StreamingServer(
            self.config.streaming.address,
            pods,
            StreamingTimeouts(
                token_ttl=self.config.streaming.token_ttl_seconds,
                creation=self.config.streaming.stream_creation_timeout_seconds,
                idle=self.config.streaming.stream_idle_timeout_seconds,
            ),
        )
        runtime = RuntimeService(  # type: ignore[abstract]
            config=self.config,
            health=self.health,
            ready=self.ready,
            version=__version__,
            pulls=images.pulls_in_progress,
            gpus=lambda: self._gpu_status(db),
            pods=pods,
            streaming=streaming,
        )
        return CriServer(
            self.socket_path,
            runtime=runtime,
            images=ImageService(images, on_pull=self.runtime_metrics.pull_requested),
            interceptor=RpcInterceptor(self.metrics, self.ready, __version__),
        )

    async def start(self) -> None:
        agent = self.config.agent
        ensure_dir(agent.root_dir, 0o711)
        # 0711, not 0700: a user-namespaced container's runtime (root of its namespace only)
        # must traverse to its rootfs; nothing here is listable, and what holds secrets
        # (bundles, conmon's and the exit dirs, the socket's dir) is 0700 below it.
        ensure_dir(agent.state_dir, 0o711)
        self._lock_state_dir()
        try:
            self.db = open_database(agent.root_dir)
            if self.db.get_info("first_start_version") is None:
                self.db.set_info("first_start_version", __version__)
            self.db.set_info("last_start_version", __version__)
            previous_starts = int(self.db.get_info("start_count") or 0)
            self.db.set_info("start_count", str(previous_starts + 1))
            self.runtime_metrics.agent_started(previous_starts)
            self.cri = self._build(self.db)
            assert self.streaming is not None
            await self.streaming.start()
            await self.cri.start()
            if self.config.metrics.address:
                self.metrics_server = MetricsServer(
                    self.registry,
                    self.config.metrics,
                    source=self.node_metrics,
                )
                await self.metrics_server.start()
            assert self.pods is not None
            self._metrics_events = asyncio.get_running_loop().create_task(
                self.runtime_metrics.watch(self.pods.subscribe_events)
            )
            await self.recover()
        except BaseException:
            await self.stop(grace=0)
            raise
        log.info("model-agent %s ready on unix://%s", __version__, self.socket_path)
        self.notifier.ready(f"serving CRI on unix://{self.socket_path}")

    def _gpu_status(self, db: MetadataDB) -> dict[str, object]:
        """``Status`` verbose ``gpu``: the service's view plus who holds which GPU."""
        holders = [dataclasses.asdict(h) for h in db.gpu_holders()]
        kubelet = self.kubelet_plugins.status_info() if self.kubelet_plugins else None
        return {**self.gpu.status_info(), "holders": holders, "kubelet": kubelet}

    async def _start_gpus(self) -> None:
        """Open NVML (or the configured backend), read the inventory, write the node's
        CDI spec; then keep it current. No GPU or no NVML is a normal, logged state."""
        await asyncio.to_thread(self.gpu.start)
        self._gpu_refresh = asyncio.get_running_loop().create_task(self.gpu.run())

    async def _follow_gpu_events(self) -> None:
        """XIDs for the metrics: from the GPU health monitor's event stream when it runs
        (a simulated backend hands each event to one reader), else from a stream of
        their own."""
        if self.node_metrics is None or self.kubelet_plugins is None:
            return
        if self.kubelet_plugins.watching_events:
            self.kubelet_plugins.observe_events(self.node_metrics.xids.observe)
        else:
            await asyncio.to_thread(self.node_metrics.follow_gpu_events)

    async def recover(self) -> None:
        """Reconcile persisted state with the host, then open for business.

        Assumptions: containers may have exited, been killed, or (after a
        reboot) vanished while the agent was down; their conmon exit files
        and the metadata database say what happened. Each step must be
        idempotent: a crash during recovery re-runs it on the next start.
        """
        started = time.monotonic()
        for name, step in self.recovery_steps:
            log.info("recovery: %s", name)
            await step()
        self.runtime_metrics.recovery_finished(time.monotonic() - started, self._recovered())
        self.ready.set()
        if self.images is not None:
            self.images.start_background_deletion()

    def _recovered(self) -> dict[str, int]:
        """What the agent found and adopted, for ``model_agent_recovered_objects``."""
        if self.pods is None or self.images is None:
            return {}
        containers = self.pods.list_containers(Selector())
        return {
            "pods": len(self.pods.list_sandboxes(Selector())),
            "containers": len(containers),
            "running_containers": sum(1 for c in containers if c.state.is_running()),
            "images": len(self.images.all()),
        }

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving; in-flight RPCs get ``grace`` seconds. Containers keep running."""
        if grace is None:
            grace = self.config.agent.shutdown_timeout_seconds
        self.notifier.stopping("stopping; containers keep running")
        self.ready.clear()
        if self.cri is not None:
            await self.cri.stop(grace)
        if self.streaming is not None:
            await self.streaming.stop()  # ends every session; exec'd processes die with them
        if self._metrics_events is not None:
            self._metrics_events.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._metrics_events
            self._metrics_events = None
        if self.node_metrics is not None:
            await asyncio.to_thread(self.node_metrics.stop_gpu_events)
        if self.pods is not None:
            await self.pods.close()
        if self.images is not None:
            await self.images.close()
        if self.kubelet_plugins is not None:
            await self.kubelet_plugins.stop()  # their sockets go; the kubelet sees them leave
        if self._gpu_refresh is not None:
            self._gpu_refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gpu_refresh
            self._gpu_refresh = None
            await asyncio.to_thread(self.gpu.close)
        if self.metrics_server is not None:
            await self.metrics_server.stop()
            self.metrics_server = None
        if self.db is not None:
            self.db.close()
            self.db = None
        self._unlock_state_dir()

    def _lock_state_dir(self) -> None:
        path = os.path.join(self.config.agent.state_dir, "model-agent.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise FailedPrecondition(
                f"state dir {self.config.agent.state_dir} is in use by another model-agent "
                f"(pid {holder}); refusing to start"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _unlock_state_dir(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
