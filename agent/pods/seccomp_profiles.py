"""Which seccomp filter a container gets, from the kubelet's SecurityProfile.

``RuntimeDefault`` is the agent's own default (``seccomp.default_profile``),
``Unconfined`` is none, ``Localhost`` is a profile file on the node (an
absolute path the kubelet sends); a file that is missing or not a valid
profile is ``INVALID_ARGUMENT`` naming it, and so is one that is not a regular file
(``/dev/zero``, a FIFO) or is over ``MAX_PROFILE_BYTES``: nothing blocks or fills memory.
"""

from __future__ import annotations

import copy
import os
import stat
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from agent.errors import InvalidArgument
from agent.pods import seccomp
from agent.pods.model import SecurityProfile

__all__ = ["MAX_PROFILE_BYTES", "SeccompProfiles"]

#: Docker's default profile is ~20 KiB as JSON; a real profile is far below this.
MAX_PROFILE_BYTES = 1 << 20


@lru_cache(maxsize=64)
def _default(capabilities: tuple[str, ...]) -> dict[str, Any]:
    return seccomp.default_profile(capabilities)


class SeccompProfiles:
    def profile(
        self, wanted: SecurityProfile, capabilities: Sequence[str]
    ) -> dict[str, Any] | None:
        caps = tuple(sorted(capabilities))
        if wanted.type == "Unconfined":
            return None
        if wanted.type == "RuntimeDefault":
            return copy.deepcopy(_default(caps))
        if wanted.type == "Localhost":
            path = wanted.localhost_ref
            if not path.startswith("/"):
                raise InvalidArgument(f"seccomp localhost profile '{path}' is not an absolute path")
            data = _read_profile(path)
            try:
                return seccomp.from_docker_json(data, caps)
            except InvalidArgument as exc:
                raise InvalidArgument(f"seccomp profile {path}: {exc}") from None
        raise InvalidArgument(f"unknown seccomp profile type '{wanted.type}'")


def _read_profile(path: str) -> bytes:
    """The file's bytes, refused unless a regular file of at most ``MAX_PROFILE_BYTES``.

    ``O_NONBLOCK``: opening a FIFO must not wait for a writer (it is then refused).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidArgument(f"seccomp profile {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"seccomp profile {path}: not a regular file")
        if st.st_size > MAX_PROFILE_BYTES:
            raise InvalidArgument(
                f"seccomp profile {path}: {st.st_size} bytes, over the {MAX_PROFILE_BYTES} limit"
            )
        chunks, size = [], 0
        while size <= MAX_PROFILE_BYTES:  # bounded even if the file grows meanwhile
            chunk = os.read(fd, MAX_PROFILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise InvalidArgument(f"seccomp profile {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if size > MAX_PROFILE_BYTES:
        raise InvalidArgument(f"seccomp profile {path}: over the {MAX_PROFILE_BYTES} byte limit")
    return b"".join(chunks)
