"""Scrape a metrics endpoint and look series up by labels: ``scrape(url)`` → ``Scrape``.

Parsed with ``prometheus_client``'s own text parser, so a malformed exposition fails
here. Independent of ``agent/``.
"""

from __future__ import annotations

import base64
import gzip
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Sample", "Scrape", "fetch", "scrape"]


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass(frozen=True, slots=True)
class Scrape:
    text: str
    samples: tuple[Sample, ...]
    types: dict[str, str]  # family name -> type

    def find(self, name: str, **labels: str) -> list[Sample]:
        """Samples of ``name`` whose labels include ``labels``."""
        return [
            s
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def one(self, name: str, **labels: str) -> Sample:
        found = self.find(name, **labels)
        assert len(found) == 1, f"{name}{labels}: {len(found)} series: {found}"
        return found[0]

    def value(self, name: str, **labels: str) -> float:
        return self.one(name, **labels).value


def fetch(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    basic: tuple[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body, decompressed when gzip) of one GET; errors are answers too."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    if basic is not None:
        token = base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as resp:
            status, got, body = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        status, got, body = exc.code, dict(exc.headers), exc.read()
    if got.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    return status, got, body


def scrape(url: str, **kwargs: object) -> Scrape:
    status, _, body = fetch(url, **kwargs)  # type: ignore[arg-type]
    assert status == 200, (status, body[:500])
    text = body.decode()
    samples: list[Sample] = []
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        samples.extend(Sample(s.name, dict(s.labels), s.value) for s in family.samples)
    return Scrape(text, tuple(samples), types)
