"""The registry's own metrics, written as ``prometheus_client`` writes them, faster.

``prometheus_client``'s encoders escape every sample name character by character
(a ``StringIO`` a sample) and sort and escape every label set again: for the
agent's few hundred registry samples that was 2 ms a scrape, as much as the 100
containers' families took to render. ``encoder_for`` answers the formats a
Prometheus asks for — text 0.0.4, and OpenMetrics 1.0 with the default
(underscores) escaping — with a writer producing the same bytes for what the agent
registers: plain names, no timestamps, exemplars or native histograms. Anything
else (another version or escaping, such a sample, a UTF-8 name) is written by
``prometheus_client`` itself; ``tests/unit/test_registry_text.py`` holds the two
to the same output. Imports nothing of the agent.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable

from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

__all__ = ["encoder_for"]

Encoder = Callable[[Collector], bytes]

#: Go's float formatting, as both encoders write values (untyped upstream)
_go_float: Callable[[float], str] = floatToGoString

#: a name every escaping leaves as it is
_PLAIN = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

#: OpenMetrics-only samples the text format moves into gauges of their own
_TEXT_GAUGE_SUFFIXES = ("_created", "_gsum", "_gcount")

#: the text format's names for OpenMetrics types
_TEXT_TYPES = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram"}


class _Unusual(Exception):
    """A metric the fast writer leaves to ``prometheus_client``."""


def encoder_for(accept: str) -> tuple[Encoder, str]:
    """(encoder, Content-Type) for an ``Accept`` header, as ``choose_encoder`` picks."""
    encoder, content_type = choose_encoder(accept)
    if encoder is generate_latest:
        openmetrics_format = False
    elif (
        isinstance(encoder, functools.partial)
        and encoder.func is openmetrics.generate_latest
        and encoder.keywords == {"escaping": openmetrics.UNDERSCORES, "version": "1.0.0"}
    ):
        openmetrics_format = True
    else:
        return encoder, content_type

    def write(registry: Collector) -> bytes:
        try:
            return _write(registry.collect(), openmetrics_format)
        except _Unusual:
            return encoder(registry)

    return write, content_type


@functools.lru_cache(maxsize=4096)
def _plain(name: str) -> bool:
    return _PLAIN.match(name) is not None


def _escape(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _line(sample: Sample) -> str:
    if (
        sample.timestamp is not None
        or sample.exemplar is not None
        or sample.native_histogram is not None
        or sample.value is None
        or not _plain(sample.name)
    ):
        raise _Unusual(sample.name)
    labels = ""
    if sample.labels:
        pairs = []
        for key, value in sorted(sample.labels.items()):
            if not _plain(key):
                raise _Unusual(key)
            pairs.append(f'{key}="{_escape(value)}"')
        labels = "{" + ",".join(pairs) + "}"
    return f"{sample.name}{labels} {_go_float(sample.value)}\n"


def _write(metrics: Iterable[Metric], openmetrics_format: bool) -> bytes:
    out: list[str] = []
    for metric in metrics:
        name = metric.name
        if not _plain(name):
            raise _Unusual(name)
        if openmetrics_format:
            out.append(f"# HELP {name} {_escape(metric.documentation)}\n")
            out.append(f"# TYPE {name} {metric.type}\n")
            if metric.unit:
                out.append(f"# UNIT {name} {metric.unit}\n")
            out.extend(_line(s) for s in metric.samples)
        else:
            _write_text(metric, out)
    if openmetrics_format:
        out.append("# EOF\n")
    return "".join(out).encode()


def _write_text(metric: Metric, out: list[str]) -> None:
    """One metric in text 0.0.4: counters end ``_total``, ``_created`` goes to a gauge."""
    name, kind = metric.name, metric.type
    exported = name + {"counter": "_total", "info": "_info"}.get(kind, "")
    kind = _TEXT_TYPES.get(kind, "untyped" if kind == "unknown" else kind)
    help_text = metric.documentation.replace("\\", "\\\\").replace("\n", "\\n")
    out.append(f"# HELP {exported} {help_text}\n# TYPE {exported} {kind}\n")
    moved: dict[str, list[str]] = {}
    for sample in metric.samples:
        suffix = sample.name[len(name) :] if sample.name.startswith(name) else ""
        if suffix in _TEXT_GAUGE_SUFFIXES:
            moved.setdefault(suffix, []).append(_line(sample))
        else:
            out.append(_line(sample))
    for suffix, lines in sorted(moved.items()):
        out.append(f"# HELP {name}{suffix} {help_text}\n# TYPE {name}{suffix} gauge\n")
        out.extend(lines)
