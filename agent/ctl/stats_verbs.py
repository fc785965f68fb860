"""Usage verbs: ``stats`` (containers), ``statsp`` (pods), ``metricsp``, ``metricdescs``.

As crictl's ``stats.go``, ``pod_stats.go``, ``pod_metrics.go`` and
``metric_descs.go``: the tables take two samples ``--seconds`` apart and show
the CPU used between them as a percentage of one core; rows without usage
(stopped containers, unless ``-a``) and rows that appeared between the
samples are left out; ``-w`` repeats every half second. JSON and YAML print
one sample, as the CRI answered it. Imports no other family of verbs.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.ctl.client import CriClient
from agent.ctl.output import FORMATS, Table, emit, human_size, truncate
from agent.ctl.verb import Verbs, add_output_flag, output_format, parse_labels

__all__ = ["container_stats_rows", "cpu_percent", "pod_stats_rows", "register"]

CLEAR_SCREEN = "\033[2J\033[H"
WATCH_INTERVAL_SECONDS = 0.5


def cpu_percent(before: pb.CpuUsage, after: pb.CpuUsage) -> float:
    """CPU time used between two samples, in percent of one core's wall time."""
    elapsed = after.timestamp - before.timestamp
    used = after.usage_core_nano_seconds.value - before.usage_core_nano_seconds.value
    if not after.usage_core_nano_seconds.value or elapsed <= 0:
        return 0.0
    return used / elapsed * 100


def container_stats_rows(
    before: list[pb.ContainerStats], after: list[pb.ContainerStats], all_containers: bool
) -> list[list[str]]:
    old = {s.attributes.id: s for s in before}
    rows = []
    for s in after:
        idle = s.cpu.usage_core_nano_seconds.value == 0 and s.memory.working_set_bytes.value == 0
        if (idle and not all_containers) or s.attributes.id not in old:
            continue
        rows.append(
            [
                truncate(s.attributes.id),
                s.attributes.metadata.name,
                f"{cpu_percent(old[s.attributes.id].cpu, s.cpu):.2f}",
                human_size(s.memory.working_set_bytes.value),
                human_size(s.writable_layer.used_bytes.value),
                str(s.writable_layer.inodes_used.value),
                human_size(s.swap.swap_usage_bytes.value),
            ]
        )
    return rows


def pod_stats_rows(
    before: list[pb.PodSandboxStats], after: list[pb.PodSandboxStats]
) -> list[list[str]]:
    old = {s.attributes.id: s for s in before}
    rows = []
    for s in after:
        memory = s.linux.memory.working_set_bytes.value
        if (s.linux.cpu.usage_core_nano_seconds.value == 0 and memory == 0) or (
            s.attributes.id not in old
        ):
            continue
        percent = cpu_percent(old[s.attributes.id].linux.cpu, s.linux.cpu)
        name = s.attributes.metadata.name
        rows.append([name, truncate(s.attributes.id), f"{percent:.2f}", human_size(memory)])
    return rows


async def _watch(show: Callable[[], Awaitable[None]], watch: bool) -> int:
    await show()
    while watch:
        await asyncio.sleep(WATCH_INTERVAL_SECONDS)
        await show()
    return 0


async def _stats(cri: CriClient, args: argparse.Namespace) -> int:
    fmt = output_format(args, "table", FORMATS)
    request = pb.ListContainerStatsRequest(
        filter=pb.ContainerStatsFilter(
            id=args.id or args.container_id or "",
            pod_sandbox_id=args.pod or "",
            label_selector=parse_labels(args.label),
        )
    )

    async def sample() -> list[pb.ContainerStats]:
        resp = await cri.runtime.ListContainerStats(request, timeout=cri.timeout)
        return sorted(resp.stats, key=lambda s: s.attributes.id)

    async def show() -> None:
        first = await sample()
        if fmt != "table":
            emit(pb.ListContainerStatsResponse(stats=first), fmt)
            return
        await asyncio.sleep(args.seconds)
        table = Table(["CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES", "SWAP"])
        for row in container_stats_rows(first, await sample(), args.all):
            table.add(row)
        print(CLEAR_SCREEN if args.watch else "", end="")
        table.write()

    return await _watch(show, args.watch)


async def _statsp(cri: CriClient, args: argparse.Namespace) -> int:
    fmt = output_format(args, "table", FORMATS)
    request = pb.ListPodSandboxStatsRequest(
        filter=pb.PodSandboxStatsFilter(
            id=args.id or args.pod_id or "", label_selector=parse_labels(args.label)
        )
    )

    async def sample() -> list[pb.PodSandboxStats]:
        resp = await cri.runtime.ListPodSandboxStats(request, timeout=cri.timeout)
        return sorted(resp.stats, key=lambda s: s.attributes.id)

    async def show() -> None:
        first = await sample()
        if fmt != "table":
            emit(pb.ListPodSandboxStatsResponse(stats=first), fmt)
            return
        await asyncio.sleep(args.seconds)
        table = Table(["POD", "POD ID", "CPU %", "MEM"])
        for row in pod_stats_rows(first, await sample()):
            table.add(row)
        print(CLEAR_SCREEN if args.watch else "", end="")
        table.write()

    return await _watch(show, args.watch)


async def _metricsp(cri: CriClient, args: argparse.Namespace) -> int:
    fmt = output_format(args, "json", ("json", "yaml"))

    async def show() -> None:
        resp = await cri.runtime.ListPodSandboxMetrics(
            pb.ListPodSandboxMetricsRequest(), timeout=cri.timeout
        )
        emit(resp, fmt)

    return await _watch(show, args.watch)


async def _metricdescs(cri: CriClient, args: argparse.Namespace) -> int:
    fmt = output_format(args, "json", ("json", "yaml"))
    resp = await cri.runtime.ListMetricDescriptors(
        pb.ListMetricDescriptorsRequest(), timeout=cri.timeout
    )
    emit(resp, fmt)
    return 0


def _sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "-s", "--seconds", type=float, default=1.0, help="CPU sample interval (default 1)"
    )
    p.add_argument("-w", "--watch", action="store_true", help="refresh every half second")
    add_output_flag(p, FORMATS)


def register(verbs: Verbs) -> None:
    p = verbs.add("stats", _stats, "container CPU, memory and disk (ListContainerStats)")
    p.add_argument("-a", "--all", action="store_true", help="also containers without usage")
    p.add_argument("--id", help="filter by container id")
    p.add_argument("container_id", nargs="?", metavar="CONTAINER-ID")
    p.add_argument("-p", "--pod", help="filter by pod id")
    _sampling_flags(p)

    p = verbs.add("statsp", _statsp, "pod sandbox CPU and memory (ListPodSandboxStats)")
    p.add_argument("--id", help="filter by pod id")
    p.add_argument("pod_id", nargs="?", metavar="POD-ID")
    _sampling_flags(p)

    p = verbs.add("metricsp", _metricsp, "pod sandbox metrics (ListPodSandboxMetrics)")
    p.add_argument("-w", "--watch", action="store_true", help="repeat every half second")
    add_output_flag(p, ("json", "yaml"))

    p = verbs.add(
        "metricdescs", _metricdescs, "the metric descriptors the CRI serves (ListMetricDescriptors)"
    )
    add_output_flag(p, ("json", "yaml"))
