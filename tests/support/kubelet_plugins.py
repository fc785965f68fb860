"""The kubelet stand-in's plugin watcher and DRA plugin manager, for tests.

Owns what the kubelet does with ``plugins_registry/``: it notices unix sockets appear and
disappear, runs the registration handshake (pluginregistration v1 ``GetInfo`` → checks →
``NotifyRegistrationStatus``), keeps the registered DRA plugins (their calls and health
stream are tests/support/kubelet_dra.py's) and picks the one the kubelet would call.

Written from the upstream kubelet of Kubernetes 1.36 (``pkg/kubelet/pluginmanager`` and
``pkg/kubelet/cm/dra/plugin``), whose behaviour it keeps where a plugin can see it:

- every socket under the directory (subdirectories too) whose name does not start with
  ``.`` is a candidate; one removed and created again is unregistered and
  registered anew, which is how a plugin re-registers;
- dial the socket (10 s), ``GetInfo`` (1 s); a type without a handler, and a DRA plugin
  whose ``supported_versions`` name no service the kubelet speaks, get
  ``NotifyRegistrationStatus(plugin_registered=False, error=...)`` and are retried with
  backoff (0.5 s doubling to 2 min 2 s); an empty ``endpoint`` means the registration
  socket itself;
- the DRA service is the *first* entry of ``supported_versions`` that the kubelet
  supports (``v1.DRAPlugin``, ``v1beta1.DRAPlugin``), so a plugin that lists v1 first is
  called on v1; a second registration of the same endpoint for a driver is refused (and
  not retried: the kubelet has already recorded it);
- of several plugins of one driver the newest connected one is called; the health stream
  is opened on registration and re-opened every ``health_retry`` seconds after it fails,
  Unimplemented included, as 1.36 does with ``ResourceHealthStatus`` on.

- with ``slice_wiper`` set (the API server, as the kubelet's client reaches it): when the
  last plugin of a driver is gone, the driver's ResourceSlices of this node are deleted
  after ``wipe_delay`` (the kubelet's 30 s) unless a plugin of that driver registers again
  meanwhile — which is how a node's slices go away on an uninstall and stay across an
  agent restart or upgrade.

Not modelled: the kubelet's periodic ``GetInfo`` connection monitor, its metrics, and the
wiping of all of a node's slices at its own start. A scan every ``poll_interval``
finds the sockets; inotify creation counts (as fsnotify gives the kubelet) tell a socket
replaced between two scans from one left alone, even when the inode number is reused.

Must not import agent/ other than the generated ``agent.api`` modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import grpc

from agent.api.kubelet.pluginregistration.v1 import (
    api_pb2 as registration,
    api_pb2_grpc as registration_grpc,
)
from tests.support._changes import Changes
from tests.support._inotify import CreationCounter
from tests.support.kubelet_dra import (
    DEFAULT_CALL_TIMEOUT,
    HEALTH_SERVICES,
    DRAPlugin,
    KubeletRejected,
)

__all__ = [
    "DRA_PLUGIN_TYPE",
    "DRA_SERVICES",
    "WIPE_DELAY",
    "Handshake",
    "PluginWatcher",
    "SliceWiper",
]

#: PluginInfo.type of a DRA driver's kubelet plugin.
DRA_PLUGIN_TYPE = "DRAPlugin"
#: The DRA services a 1.36 kubelet speaks, newest first.
DRA_SERVICES = ("v1.DRAPlugin", "v1beta1.DRAPlugin")
DIAL_TIMEOUT = 10.0
GET_INFO_TIMEOUT = 1.0
NOTIFY_TIMEOUT = 5.0
RETRY_INITIAL, RETRY_MAX = 0.5, 122.0  # goroutinemap's exponential backoff
#: How long after a driver's last plugin went away the kubelet deletes its slices.
WIPE_DELAY = 30.0
#: Deletes a driver's ResourceSlices of this node (``deletecollection`` on the API server).
SliceWiper = Callable[[str], None]


@dataclass(frozen=True)
class Handshake:
    """One registration attempt at one socket."""

    socket_path: str
    info: registration.PluginInfo | None  # None when dialing or GetInfo failed
    registered: bool
    error: str  # what the kubelet logged; sent to the plugin when ``notified``
    notified: bool  # NotifyRegistrationStatus reached the plugin


def _choose_service(driver: str, endpoint: str, versions: Sequence[str]) -> str:
    prefix = f"invalid supported gRPC versions of DRA driver plugin {driver} at endpoint {endpoint}"
    if not versions:
        raise ValueError(
            f"{prefix}: empty list of supported gRPC services (aka supported versions)"
        )
    for service in versions:
        if service in DRA_SERVICES:
            return service
    raise ValueError(
        f"{prefix}: none of services supported by the plugin ({list(versions)!r}) "
        f"are supported by the kubelet ({list(DRA_SERVICES)!r})"
    )


@dataclass
class _Registered:
    identity: int  # how often the socket had been created when it was registered
    plugin: DRAPlugin | None  # None when the handler refused it after recording it


class PluginWatcher:
    """Watches ``registry_dir`` and registers the plugins whose sockets appear there."""

    def __init__(
        self,
        registry_dir: str,
        *,
        poll_interval: float = 0.02,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        health_version: str | None = None,
        health_retry: float = 5.0,
        slice_wiper: SliceWiper | None = None,
        wipe_delay: float = WIPE_DELAY,
    ) -> None:
        if health_version is not None and health_version not in HEALTH_SERVICES:
            raise ValueError(f"health_version must be one of {sorted(HEALTH_SERVICES)}")
        self.registry_dir = registry_dir
        self.handshakes: list[Handshake] = []
        self.deregistered: list[DRAPlugin] = []
        self._poll = poll_interval
        self._call_timeout = call_timeout
        self._health_version = health_version
        self._health_retry = health_retry
        self._desired: dict[str, int] = {}
        self._actual: dict[str, _Registered] = {}
        self._store: dict[str, list[DRAPlugin]] = {}  # driver → plugins, oldest first
        self._operations: dict[str, asyncio.Task[None]] = {}
        self._retry_at: dict[str, tuple[float, float]] = {}  # socket → (not before, delay)
        self._generation = 0
        self._changes = Changes()
        self._task: asyncio.Task[None] | None = None
        self._creations: CreationCounter | None = None
        self._slice_wiper = slice_wiper
        self._wipe_delay = wipe_delay
        self._wipes: dict[str, asyncio.Task[None]] = {}  # driver → its pending wipe
        #: drivers whose slices were wiped, in order
        self.wiped: list[str] = []

    async def start(self) -> None:
        os.makedirs(self.registry_dir, mode=0o755, exist_ok=True)
        self._creations = CreationCounter()
        self._creations.watch(self.registry_dir)
        self._task = asyncio.create_task(self._run(), name="plugin-watcher")

    async def stop(self) -> None:
        """Stop watching and close every connection; the sockets stay (plugins own them)."""
        tasks = [t for t in (self._task, *self._operations.values(), *self._wipes.values()) if t]
        self._wipes.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None
        self._operations.clear()
        for plugins in self._store.values():
            for plugin in plugins:
                await plugin.close()
        self._store.clear()
        self._actual.clear()
        self._desired.clear()
        self._retry_at.clear()
        if self._creations is not None:
            self._creations.close()
            self._creations = None

    # --- what tests read -------------------------------------------------------------

    def plugins(self, driver: str) -> list[DRAPlugin]:
        return list(self._store.get(driver, ()))

    def plugin(self, driver: str) -> DRAPlugin:
        """The plugin the kubelet would call: the newest connected one, else the newest."""
        plugins = self._store.get(driver)
        if not plugins:
            raise KubeletRejected(f"DRA driver {driver} is not registered")
        for plugin in reversed(plugins):
            if plugin.connected():
                return plugin
        return plugins[-1]

    async def wait_registered(
        self, driver: str, *, after: DRAPlugin | None = None, timeout: float = 10.0
    ) -> DRAPlugin:
        """The newest registration of ``driver``, newer than ``after`` when given."""
        floor = after.generation if after is not None else 0

        def newest() -> DRAPlugin | None:
            plugins = [p for p in self._store.get(driver, ()) if p.generation > floor]
            return plugins[-1] if plugins else None

        return await self._changes.wait_for(newest, timeout, f"DRA driver {driver} to register")

    async def wait_deregistered(self, plugin: DRAPlugin, timeout: float = 10.0) -> None:
        await self._changes.wait_for(
            lambda: plugin in self.deregistered, timeout, f"{plugin.driver_name} to unregister"
        )

    async def wait_handshake(
        self, predicate: Callable[[Handshake], bool], timeout: float = 10.0
    ) -> Handshake:
        def found() -> Handshake | None:
            return next((h for h in self.handshakes if predicate(h)), None)

        return await self._changes.wait_for(found, timeout, "a registration handshake")

    # --- the kubelet's reconciler ------------------------------------------------------

    async def _run(self) -> None:
        assert self._creations is not None
        while True:
            sockets = list(self._scan(self._creations))
            # Counted after the scan: a creation the scan saw is in its count already.
            self._creations.drain()
            self._desired = {path: self._creations.created[path] for path in sockets}
            await self._reconcile()
            await asyncio.sleep(self._poll)

    def _scan(self, creations: CreationCounter) -> Iterable[str]:
        for dirpath, dirnames, filenames in os.walk(self.registry_dir):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            creations.watch(dirpath)
            for name in filenames:
                if name.startswith("."):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                if stat.S_ISSOCK(st.st_mode):
                    yield path

    async def _reconcile(self) -> None:
        for path, registered in list(self._actual.items()):
            if self._desired.get(path) != registered.identity and path not in self._operations:
                del self._actual[path]
                if registered.plugin is not None:
                    await self._deregister(registered.plugin)
        now = time.monotonic()
        for path, identity in self._desired.items():
            if path in self._actual or path in self._operations:
                continue
            not_before, _ = self._retry_at.get(path, (0.0, 0.0))
            if now < not_before:
                continue
            task = asyncio.create_task(self._register(path, identity), name=f"register {path}")
            self._operations[path] = task
            task.add_done_callback(lambda _, p=path: self._operations.pop(p, None))  # type: ignore[misc]

    def _failed(self, path: str) -> None:
        _, delay = self._retry_at.get(path, (0.0, 0.0))
        delay = min(RETRY_MAX, delay * 2) if delay else RETRY_INITIAL
        self._retry_at[path] = (time.monotonic() + delay, delay)

    def _record(self, handshake: Handshake) -> None:
        self.handshakes.append(handshake)
        self._changes.notify()

    async def _register(self, path: str, identity: int) -> None:
        channel = grpc.aio.insecure_channel(f"unix:{path}")
        try:
            try:
                await asyncio.wait_for(channel.channel_ready(), DIAL_TIMEOUT)
            except TimeoutError:
                self._failed(path)
                self._record(Handshake(path, None, False, f"dial failed at socket {path}", False))
                return
            client = registration_grpc.RegistrationStub(channel)
            try:
                info = await client.GetInfo(registration.InfoRequest(), timeout=GET_INFO_TIMEOUT)
            except grpc.aio.AioRpcError as error:
                self._failed(path)
                message = (
                    f"failed to get plugin info using RPC GetInfo at socket {path}, "
                    f"err: {error.details()}"
                )
                self._record(Handshake(path, None, False, message, False))
                return
            await self._handle(client, path, identity, info)
        finally:
            await channel.close()

    async def _handle(
        self,
        client: registration_grpc.RegistrationAsyncStub,
        path: str,
        identity: int,
        info: registration.PluginInfo,
    ) -> None:
        async def notify(registered: bool, error: str) -> bool:
            status = registration.RegistrationStatus(plugin_registered=registered, error=error)
            try:
                await client.NotifyRegistrationStatus(status, timeout=NOTIFY_TIMEOUT)
            except grpc.aio.AioRpcError:
                return False
            return True

        if info.type != DRA_PLUGIN_TYPE:
            error = (
                "RegisterPlugin error -- no handler registered for plugin type: "
                f"{info.type} at socket {path}"
            )
            self._failed(path)
            self._record(Handshake(path, info, False, error, await notify(False, error)))
            return
        endpoint = info.endpoint or path
        try:
            service = _choose_service(info.name, endpoint, info.supported_versions)
        except ValueError as invalid:
            error = f"RegisterPlugin error -- plugin validation failed with err: {invalid}"
            self._failed(path)
            self._record(Handshake(path, info, False, error, await notify(False, error)))
            return
        self._retry_at.pop(path, None)
        registered = _Registered(identity, None)
        self._actual[path] = registered  # before the handler, as the kubelet does
        if any(p.endpoint == endpoint for p in self._store.get(info.name, ())):
            error = (
                "RegisterPlugin error -- plugin registration failed with err: "
                f"endpoint {endpoint} already registered for DRA driver plugin {info.name}"
            )
            self._record(Handshake(path, info, False, error, await notify(False, error)))
            return
        self._generation += 1
        plugin = DRAPlugin(
            driver_name=info.name,
            endpoint=endpoint,
            service=service,
            supported_versions=tuple(info.supported_versions),
            registration_socket=path,
            generation=self._generation,
            call_timeout=self._call_timeout,
            channel=grpc.aio.insecure_channel(f"unix:{endpoint}"),
        )
        plugin.connected()  # start connecting now, as the kubelet's conn.Connect() does
        if self._health_version is not None:
            plugin.watch_health(self._health_version, self._health_retry)
        registered.plugin = plugin
        self._store.setdefault(info.name, []).append(plugin)
        pending = self._wipes.pop(info.name, None)
        if pending is not None:  # back within the delay: the slices stay
            pending.cancel()
        notified = await notify(True, "")
        self._record(Handshake(path, info, True, "", notified))

    async def _deregister(self, plugin: DRAPlugin) -> None:
        plugins = self._store.get(plugin.driver_name, [])
        if plugin in plugins:
            plugins.remove(plugin)
        if not plugins:
            self._store.pop(plugin.driver_name, None)
            if self._slice_wiper is not None and plugin.driver_name not in self._wipes:
                self._wipes[plugin.driver_name] = asyncio.create_task(
                    self._wipe_later(plugin.driver_name)
                )
        await plugin.close()
        self.deregistered.append(plugin)
        self._changes.notify()

    async def _wipe_later(self, driver: str) -> None:
        await asyncio.sleep(self._wipe_delay)
        self._wipes.pop(driver, None)
        assert self._slice_wiper is not None
        await asyncio.to_thread(self._slice_wiper, driver)
        self.wiped.append(driver)
        self._changes.notify()
