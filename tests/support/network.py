"""Host-side helpers for network tests: free subnets, iptables bookkeeping, an echo server.

The real bridge/portmap plugins change host state that outlives a pod: the bridge
itself, ``net.ipv4.ip_forward``, and portmap's shared ``CNI-HOSTPORT-*`` chains with
their jumps from PREROUTING/OUTPUT/POSTROUTING. ``HostNetworkState`` records what was
there before a test so its teardown can remove exactly what the test added.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import os
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass

from tests.support import run

CNI_BIN_DIRS = ["/usr/lib/cni"]
#: Test pods get a /24 out of this; nothing else on a test machine uses it.
TEST_SUPERNET = ipaddress.IPv4Network("10.250.0.0/16")
_TABLES = ("nat", "filter")
_IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"


def sh(*argv: str, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr}")
    return done.stdout


def unique_bridge() -> str:
    """A bridge name no other test uses: ``mt-`` + the run id + 4 hex digits."""
    return run.bridge("mt-")


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 10.250.0.0/16 that overlaps nothing on the host (random, so reruns differ)."""
    return run.subnet(str(TEST_SUPERNET))


def host_veths() -> set[str]:
    lines = sh("ip", "-o", "link", "show", "type", "veth").splitlines()
    return {line.split(":")[1].strip().split("@")[0] for line in lines if ":" in line}


def link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def iptables_lines(table: str) -> list[str]:
    """``iptables-save -t TABLE``: chain declarations (``:NAME``) and ``-A`` rules."""
    lines = []
    for line in sh("iptables-save", "-t", table).splitlines():
        if line.startswith(":"):
            lines.append(line.split()[0])  # ":CHAIN" without policy and counters
        elif line.startswith("-A"):
            lines.append(line)
    return lines


def iptables_mentioning(text: str) -> list[str]:
    return [f"{t} {line}" for t in _TABLES for line in iptables_lines(t) if text in line]


def cni_chains(network_name: str, container_id: str) -> set[str]:
    """The per-pod chains bridge (masquerade) and portmap (DNAT) name after the pod.

    Both plugins use ``"CNI-" + prefix + sha512(network + id)``, cut to 28 characters.
    """
    digest = hashlib.sha512((network_name + container_id).encode()).hexdigest()
    return {f"CNI-{digest}"[:28], f"CNI-DN-{digest}"[:28]}


@dataclass
class HostNetworkState:
    """What the host had before a test: iptables chains/rules and ip_forward."""

    iptables: dict[str, set[str]]
    ip_forward: str

    @classmethod
    def capture(cls) -> HostNetworkState:
        with open(_IP_FORWARD) as f:
            forward = f.read().strip()
        return cls({t: set(iptables_lines(t)) for t in _TABLES}, forward)

    def restore(self, network_name: str, container_ids: Collection[str]) -> list[str]:
        """Remove the CNI chains and rules of the test's pods; what was removed.

        Only what is provably the test's goes: the per-pod chains of its container
        ids, rules naming those ids or jumping to those chains, and portmap's shared
        ``CNI-HOSTPORT-*`` chains (with their jumps) if they are new and no other
        pod's DNAT chain remains, so another test's pods on the same host are left
        alone. Jumps go first, then the chains are flushed and deleted.
        ``ip_forward`` is put back when no pod of anyone is masqueraded any more.
        """
        owned = set().union(*(cni_chains(network_name, c) for c in container_ids))
        removed = []
        others = False
        for table in _TABLES:
            now = iptables_lines(table)
            chains = {line[1:] for line in now if line.startswith(":")}
            pods = {c for c in chains if c.startswith("CNI-") and not c.startswith("CNI-HOSTPORT-")}
            others = others or bool(pods - owned)
            targets = owned & chains
            if not any(c.startswith("CNI-DN-") for c in pods - owned):
                targets |= {
                    c
                    for c in chains
                    if c.startswith("CNI-HOSTPORT-") and f":{c}" not in self.iptables[table]
                }
            for rule in now:
                if not rule.startswith("-A"):
                    continue
                argv = shlex.split(rule)
                if argv[1] in targets:
                    continue  # flushed below
                if any(a in targets for a in argv) or any(c in rule for c in container_ids):
                    sh("iptables", "-t", table, "-D", *argv[1:], check=False)
                    removed.append(f"{table} {rule}")
            for chain in targets:
                sh("iptables", "-t", table, "-F", chain, check=False)
            for chain in targets:
                sh("iptables", "-t", table, "-X", chain, check=False)
                removed.append(f"{table} :{chain}")
        with open(_IP_FORWARD) as f:
            if not others and f.read().strip() != self.ip_forward:
                with open(_IP_FORWARD, "w") as w:
                    w.write(self.ip_forward)
        return removed


ECHO_SERVER = """
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1])))
srv.listen()
print("ready", flush=True)
while True:
    conn, peer = srv.accept()
    with conn:
        data = conn.recv(65536)
        conn.sendall(data + b" from " + peer[0].encode())
"""


@contextlib.asynccontextmanager
async def _serve_in(netns_path: str, script: str, port: int) -> AsyncIterator[None]:
    """Run a Python server ``script`` (it prints "ready") inside the namespace until exit."""
    proc = await asyncio.create_subprocess_exec(
        "nsenter",
        f"--net={netns_path}",
        "--",
        sys.executable,
        "-c",
        script,
        str(port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        assert line.strip() == b"ready", line
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.communicate()


def echo_server(netns_path: str, port: int) -> contextlib.AbstractAsyncContextManager[None]:
    """A TCP echo server inside the namespace (replies ``<data> from <peer ip>``)."""
    return _serve_in(netns_path, ECHO_SERVER, port)


STREAM_ECHO_SERVER = """
import asyncio, sys

async def echo(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()

async def main():
    server = await asyncio.start_server(echo, "0.0.0.0", int(sys.argv[1]), backlog=4096)
    print("ready", flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


def stream_echo_server(netns_path: str, port: int) -> contextlib.AbstractAsyncContextManager[None]:
    """A TCP server inside the namespace that echoes each connection until its EOF, for
    any number of connections at once (busybox ``nc -ll`` resets some under load)."""
    return _serve_in(netns_path, STREAM_ECHO_SERVER, port)


SILENT_SERVER = """
import socket, sys, time
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
srv.bind(("0.0.0.0", int(sys.argv[1])))
srv.listen(4096)
print("ready", flush=True)
held = []
while True:
    conn, _ = srv.accept()
    held.append(conn)
"""


def silent_server(netns_path: str, port: int) -> contextlib.AbstractAsyncContextManager[None]:
    """A TCP server inside the namespace that accepts every connection and never reads from
    one (a small receive buffer, so senders block soon): what a stuck pod looks like."""
    return _serve_in(netns_path, SILENT_SERVER, port)


async def echo(host: str, port: int, payload: bytes = b"ping", timeout: float = 5.0) -> bytes:
    """Connect, send, read the reply until the server closes."""

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(payload)
            await writer.drain()
            return await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.wait_for(exchange(), timeout)
