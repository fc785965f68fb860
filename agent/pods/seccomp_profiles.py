"""Which seccomp filter a container gets, from the kubelet's SecurityProfile.

``RuntimeDefault`` is the agent's own default (``seccomp.default_profile``),
``Unconfined`` is none, ``Localhost`` is a profile file on the node (an
absolute path the kubelet sends); a file that is missing or not a valid
profile is ``INVALID_ARGUMENT`` naming it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from agent.errors import InvalidArgument
from agent.pods import seccomp
from agent.pods.model import SecurityProfile

__all__ = ["SeccompProfiles"]


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
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as exc:
                raise InvalidArgument(f"seccomp profile {path}: {exc.strerror}") from None
            try:
                return seccomp.from_docker_json(data, caps)
            except InvalidArgument as exc:
                raise InvalidArgument(f"seccomp profile {path}: {exc}") from None
        raise InvalidArgument(f"unknown seccomp profile type '{wanted.type}'")
