"""The exposition of scrape-time families, and its merge with the registry's own output.

Scrape-time collectors (GPUs, containers) produce thousands of samples that share a
few label sets: every cAdvisor family of a container carries the same six labels,
every GPU family of a device the same seventeen. ``FamilyBuilder`` renders each
label set once per scrape (``LabelCache``) and a sample is then one string and a
float; ``render`` writes the families as Prometheus text 0.0.4 or OpenMetrics 1.0.
``prometheus_client`` would escape and sort every label of every sample again,
which cost more than reading the cgroups (``bench/metrics.py``).

``encode`` serves a scrape: the registry's own metrics (counters, histograms,
``process_*``…) in the negotiated format (``registry_text``), then these families,
then OpenMetrics' ``# EOF``. Imports only ``registry_text`` of the agent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from agent.metrics.registry_text import encoder_for

__all__ = ["Family", "FamilyBuilder", "LabelCache", "encode", "render"]

COUNTER = "counter"
GAUGE = "gauge"
UNKNOWN = "unknown"


def _escape_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _number(value: float) -> str:
    if type(value) is int:  # most cgroup counters
        return str(value)
    value = float(value)  # a bool, a numpy number, a Decimal...
    if -1e15 < value < 1e15:  # neither NaN nor infinite; most samples are integers
        whole = int(value)
        return str(whole) if whole == value else repr(value)
    if value != value:
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


class LabelCache:
    """``{k="v",...}`` strings by (keys, values), kept from one scrape to the next.

    The label sets of a node change only as containers and GPUs come and go, and
    rendering them again every scrape was a sixth of its cost. ``next_scrape`` starts
    a new generation: a string used in the last one moves over, the others are dropped,
    so the cache holds what two scrapes used and never grows beyond that.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[tuple[str, ...], tuple[str, ...]], str] = {}
        self._previous: dict[tuple[tuple[str, ...], tuple[str, ...]], str] = {}
        # The last answer, by identity: a container's families come one after the
        # other with the very same label tuples, and hashing them was a tenth of a scrape.
        self._last: tuple[tuple[str, ...], tuple[str, ...], str] = ((), (), "")

    def next_scrape(self) -> None:
        self._previous, self._cache = self._cache, {}

    def text(self, keys: tuple[str, ...], values: tuple[str, ...]) -> str:
        last_keys, last_values, last_text = self._last
        if values is last_values and keys is last_keys:
            return last_text
        key = (keys, values)
        found = self._cache.get(key)
        if found is None:
            found = self._previous.get(key)
            if found is None:
                found = _render_labels(keys, values)
            self._cache[key] = found
        self._last = (keys, values, found)
        return found


def _render_labels(keys: tuple[str, ...], values: tuple[str, ...]) -> str:
    if len(keys) != len(values):
        raise ValueError(f"labels {keys} given {len(values)} values")
    inner = ",".join(f'{k}="{_escape_value(v)}"' for k, v in zip(keys, values, strict=True))
    return "{" + inner + "}" if inner else ""


@dataclass(slots=True)
class Family:
    """One metric family, its samples already rendered (``name{labels} value``, a line each)."""

    name: str  # as OpenMetrics names the family: a counter without ``_total``
    help: str
    type: str  # counter, gauge or unknown
    lines: list[str] = field(default_factory=list)


class FamilyBuilder:
    """Collects the samples of one family; ``name`` as exported (a counter's ends ``_total``).

    A sample is rendered as it is added: both formats write sample lines alike, and
    one f-string per sample is the least a scrape of thousands can do.
    """

    def __init__(
        self, name: str, help_text: str, kind: str, keys: Sequence[str], cache: LabelCache
    ) -> None:
        if kind == COUNTER and not name.endswith("_total"):
            raise ValueError(f"counter {name} must end in _total")
        family_name = name.removesuffix("_total") if kind == COUNTER else name
        self.family = Family(family_name, help_text, kind)
        self.sample_name = name
        self.keys = tuple(keys)
        self._cache = cache

    def add(self, values: tuple[str, ...], value: float) -> None:
        labels = self._cache.text(self.keys, values)
        self.family.lines.append(f"{self.sample_name}{labels} {_number(value)}\n")


def _help(text: str, openmetrics: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if openmetrics else text


def _family_text(family: Family, openmetrics: bool) -> str:
    if openmetrics:
        name, kind = family.name, family.type
    else:
        name = family.name + "_total" if family.type == COUNTER else family.name
        kind = "untyped" if family.type == UNKNOWN else family.type
    head = f"# HELP {name} {_help(family.help, openmetrics)}\n# TYPE {name} {kind}\n"
    return head + "".join(family.lines)


def render(families: Iterable[Family], *, openmetrics: bool) -> str:
    """The families in text 0.0.4, or OpenMetrics 1.0 without the final ``# EOF``."""
    return "".join(_family_text(f, openmetrics) for f in families if f.lines)


def encode(
    registry: CollectorRegistry, families: Iterable[Family], accept: str
) -> tuple[list[bytes], str]:
    """(body in pieces, Content-Type) of one scrape in the format ``accept`` asks for.

    A piece a family: gzip takes them one by one and a plain body joins them once,
    where joining the whole text, encoding it and prepending the registry's part made
    three megabyte-sized copies a scrape.
    """
    encoder, content_type = encoder_for(accept)
    head = encoder(registry)
    openmetrics = content_type.startswith("application/openmetrics-text")
    eof = b"# EOF\n"
    if openmetrics and head.endswith(eof):
        head = head[: -len(eof)]
    pieces = [head]
    pieces += [_family_text(f, openmetrics).encode() for f in families if f.lines]
    if openmetrics:
        pieces.append(eof)
    return pieces, content_type
