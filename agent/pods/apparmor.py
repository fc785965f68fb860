"""AppArmor for containers: which profile a request gets, on this host.

Requests come as the CRI's ``runtime/default``, ``unconfined`` or
``localhost/<profile>`` (empty means the runtime's default, as with containerd).

    host with AppArmor     runtime/default -> the agent's default profile (loaded once
                                              with apparmor_parser when missing)
                           localhost/<p>   -> <p>, which must be loaded (else refused)
    host without AppArmor  runtime/default -> none, logged once (nothing to confine with)
                           localhost/<p>   -> refused: the pod asked for a profile it
                                              cannot have, so it must not run unconfined
    unconfined             -> none

The answer is the OCI ``process.apparmorProfile`` value (None: leave it out).
"""

from __future__ import annotations

import logging
import os
import tempfile

from agent._util.proc import CommandFailed, run
from agent.errors import FailedPrecondition, InvalidArgument

__all__ = ["DEFAULT_PROFILE_NAME", "AppArmor", "default_profile"]

log = logging.getLogger(__name__)

DEFAULT_PROFILE_NAME = "model-agent-default"
_PARSER_TIMEOUT = 30.0


def default_profile(name: str = DEFAULT_PROFILE_NAME) -> str:
    """The RuntimeDefault profile: containerd's and Docker's default, in effect."""
    return f"""#include <tunables/global>

profile {name} flags=(attach_disconnected,mediate_deleted) {{
  #include <abstractions/base>

  network,
  capability,
  file,
  umount,
  signal (receive) peer=unconfined,
  signal (send,receive) peer={name},

  deny @{{PROC}}/* w,   # deny write for all files directly in /proc (not in a subdir)
  deny @{{PROC}}/{{[^1-9],[^1-9][^0-9],[^1-9s][^0-9y][^0-9s],[^1-9][^0-9][^0-9][^0-9/]*}}/** w,
  deny @{{PROC}}/sys/[^k]** w,
  deny @{{PROC}}/sys/kernel/{{?,??,[^s][^h][^m]**}} w,
  deny @{{PROC}}/sysrq-trigger rwklx,
  deny @{{PROC}}/kcore rwklx,
  deny mount,
  deny /sys/[^f]*/** wklx,
  deny /sys/f[^s]*/** wklx,
  deny /sys/fs/[^c]*/** wklx,
  deny /sys/fs/c[^g]*/** wklx,
  deny /sys/fs/cg[^r]*/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/kernel/security/** rwklx,

  ptrace (trace,read,tracedby,readby) peer={name},
}}
"""


class AppArmor:
    """The host's AppArmor, as far as containers need it."""

    def __init__(
        self,
        *,
        securityfs: str = "/sys/kernel/security/apparmor",
        enabled_flag: str = "/sys/module/apparmor/parameters/enabled",
        parser: str = "apparmor_parser",
    ) -> None:
        self._securityfs = securityfs
        self._enabled_flag = enabled_flag
        self._parser = parser
        self._warned = False

    def enabled(self) -> bool:
        try:
            with open(self._enabled_flag) as f:
                flag = f.read().strip()
        except OSError:
            return False
        return flag == "Y" and os.path.isdir(self._securityfs)

    def loaded(self) -> set[str]:
        """Names of the profiles the kernel has (``profiles`` lists ``name (mode)``)."""
        try:
            with open(os.path.join(self._securityfs, "profiles")) as f:
                return {line.rsplit(" (", 1)[0] for line in f if line.strip()}
        except OSError:
            return set()

    async def profile_for(self, request: str) -> str | None:
        """The profile to run with (see the module docstring); raises when refused."""
        if request in ("unconfined",):
            return None
        if request and request != "runtime/default" and not request.startswith("localhost/"):
            raise InvalidArgument(f"AppArmor profile {request!r} is not a CRI profile request")
        enabled = self.enabled()
        if request.startswith("localhost/"):
            name = request.removeprefix("localhost/")
            if not name or "\n" in name:
                raise InvalidArgument(f"AppArmor profile {request!r} has no valid name")
            if not enabled:
                raise FailedPrecondition(
                    f"AppArmor profile {name!r} was asked for, but this host has no AppArmor; "
                    "refusing to run the container unconfined"
                )
            if name not in self.loaded():
                raise FailedPrecondition(f"AppArmor profile {name!r} is not loaded on this host")
            return name
        if not enabled:
            if not self._warned and request:
                self._warned = True
                log.info("AppArmor RuntimeDefault asked for, but this host has no AppArmor")
            return None
        if DEFAULT_PROFILE_NAME not in self.loaded():
            await self._load_default()
        return DEFAULT_PROFILE_NAME

    async def _load_default(self) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".apparmor", delete=False) as f:
            f.write(default_profile())
        try:
            await run([self._parser, "-Kr", f.name], timeout=_PARSER_TIMEOUT)
        except (CommandFailed, OSError) as exc:
            raise FailedPrecondition(f"load the default AppArmor profile: {exc}") from None
        finally:
            os.unlink(f.name)
        log.info("loaded AppArmor profile %s", DEFAULT_PROFILE_NAME)
