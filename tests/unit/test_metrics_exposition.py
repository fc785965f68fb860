"""The scrape-time exposition: label strings kept across scrapes, sample lines, numbers."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from agent.metrics.exposition import FamilyBuilder, LabelCache, render

KEYS = ("container", "pod")


def test_label_strings_survive_one_scrape_and_go_with_the_next_unused_one():
    cache = LabelCache()
    first = cache.text(KEYS, ("web", "p1"))
    assert first == '{container="web",pod="p1"}'
    cache.next_scrape()
    again = cache.text(KEYS, ("web", "p1"))  # an equal, not identical, tuple: found by value
    assert again is first  # kept: not rendered again
    cache.next_scrape()
    cache.text(KEYS, ("db", "p2"))  # the scrape after that no longer asks for web/p1
    cache.next_scrape()
    assert len(cache._cache) == 0 and set(cache._previous) == {(KEYS, ("db", "p2"))}
    assert cache.text(KEYS, ("web", "p1")) == first  # rendered anew, equal


def test_a_label_set_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="given 1 values"):
        LabelCache().text(KEYS, ("only-one",))


def test_samples_render_as_lines_with_exact_numbers():
    cache = LabelCache()
    family = FamilyBuilder("demo_bytes_total", "Bytes.", "counter", ("gpu",), cache)
    values: tuple[tuple[str, Any], ...] = (
        ("0", 12),
        ("1", 2.5),
        ("2", True),
        ("3", 1e20),
        ("4", float("nan")),
        ("5", Decimal("1.5")),
        ("6", 2**63),
    )
    for gpu, value in values:
        family.add((gpu,), value)
    text = render([family.family], openmetrics=True)
    assert text.splitlines() == [
        "# HELP demo_bytes Bytes.",
        "# TYPE demo_bytes counter",
        'demo_bytes_total{gpu="0"} 12',
        'demo_bytes_total{gpu="1"} 2.5',
        'demo_bytes_total{gpu="2"} 1',
        'demo_bytes_total{gpu="3"} 1e+20',
        'demo_bytes_total{gpu="4"} NaN',
        'demo_bytes_total{gpu="5"} 1.5',  # any number type, written as a float
        'demo_bytes_total{gpu="6"} 9223372036854775808',  # exact
    ]
    assert render([family.family], openmetrics=False).startswith(
        "# HELP demo_bytes_total Bytes.\n# TYPE demo_bytes_total counter\n"
    )
