"""Image references: parse and normalise them the way the kubelet and containerd do.

    busybox                      -> docker.io/library/busybox:latest
    quay.io/org/app:v1           -> quay.io/org/app:v1
    localhost:5000/m@sha256:...  -> localhost:5000/m@sha256:...
    app:v1@sha256:...            -> docker.io/library/app@sha256:...  (a digest wins over a tag)

The grammar is the distribution project's (``reference/regexp.go``): a domain
is recognised by a dot, a port or the name ``localhost``; repository paths are
lower case. Anything else is an ``InvalidArgument`` that says what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.errors import InvalidArgument

__all__ = ["DEFAULT_DOMAIN", "Reference", "is_digest", "parse", "parse_digest"]

DEFAULT_DOMAIN = "docker.io"
_OFFICIAL_PREFIX = "library/"
_MAX_NAME = 255

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
_PATH_RE = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
_DOMAIN_RE = re.compile(rf"^{_DOMAIN}$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
_ANY_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


def is_digest(value: str) -> bool:
    return bool(_DIGEST_RE.match(value))


def parse_digest(value: str) -> str:
    """Validate a content digest; only sha256 is supported (as by every registry in use)."""
    if _DIGEST_RE.match(value):
        return value
    if _ANY_DIGEST_RE.match(value) and not value.startswith("sha256:"):
        raise InvalidArgument(f"unsupported digest algorithm in '{value}' (only sha256)")
    raise InvalidArgument(f"invalid digest '{value}'")


@dataclass(frozen=True, slots=True)
class Reference:
    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """``domain/path``: the repository, without tag or digest."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        if self.digest:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag}"

    @property
    def object(self) -> str:
        """What to ask the registry for: the digest when there is one, else the tag."""
        return self.digest or self.tag

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.domain, self.path, digest=digest)


def parse(text: str) -> Reference:
    """Parse and normalise ``text``; raise ``InvalidArgument`` naming the problem."""
    original = text
    if not text or text != text.strip():
        raise InvalidArgument(f"invalid image reference '{original}': empty or padded")
    digest = ""
    if "@" in text:
        text, _, digest = text.partition("@")
        digest = parse_digest(digest)
    tag = ""
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:  # a colon after the last slash separates the tag
        text, tag = text[:colon], text[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise InvalidArgument(f"invalid image reference '{original}': bad tag '{tag}'")
    domain, path = _split_domain(text)
    if not _DOMAIN_RE.match(domain):
        raise InvalidArgument(f"invalid image reference '{original}': bad registry '{domain}'")
    if not _PATH_RE.match(path):
        if path.lower() != path and _PATH_RE.match(path.lower()):
            raise InvalidArgument(
                f"invalid image reference '{original}': repository name must be lowercase"
            )
        raise InvalidArgument(f"invalid image reference '{original}': bad repository '{path}'")
    if len(f"{domain}/{path}") > _MAX_NAME:
        raise InvalidArgument(f"invalid image reference '{original}': name longer than 255")
    if digest:
        tag = ""  # containerd's ParseDockerRef: the digest identifies the content
    elif not tag:
        tag = "latest"
    return Reference(domain, path, tag, digest)


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        domain, path = first, rest
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == "index.docker.io":
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = _OFFICIAL_PREFIX + path
    return domain, path
