"""Tell the service manager how the agent is doing: systemd's ``sd_notify`` protocol.

With ``Type=notify`` systemd starts the units ordered after ours (the kubelet)
only once the agent sent ``READY=1``, which it does after recovery, when every
RPC answers. ``STOPPING=1`` says a stop has begun; ``STATUS=`` is the one-line
state ``systemctl status`` shows. The protocol: one datagram per message, of
``KEY=VALUE`` lines, to the unix socket named by ``$NOTIFY_SOCKET`` (a path, or
an abstract name when it starts with ``@``). Without ``$NOTIFY_SOCKET`` (run by
hand, or by another supervisor) every call does nothing. A failed send is
logged and never stops the agent: readiness is also visible through ``Status``.

The variable is removed from the agent's own environment once read (what
``sd_notify(unset_environment=1)`` does): runc, conmon and CNI plugins inherit
the agent's environment, and runc given ``NOTIFY_SOCKET`` would forward the
*containers'* notify messages to the agent's unit.

Imports nothing from the agent.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier"]

log = logging.getLogger(__name__)


class Notifier:
    """Sends ``sd_notify`` messages to ``$NOTIFY_SOCKET`` (read once, at construction).

    Without ``environ``, the process environment is read and the variable removed from it.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        if environ is None:
            name = os.environ.pop("NOTIFY_SOCKET", "")
        else:
            name = environ.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None
        if not name:
            self._address = None
        elif name.startswith("@"):
            self._address = b"\0" + name[1:].encode()  # abstract namespace
        elif name.startswith("/"):
            self._address = name
        else:
            log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract name; ignored", name)
            self._address = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` lines (keys as given, e.g. ``READY=1``); whether it was sent."""
        if self._address is None:
            return False
        lines = []
        for key, value in fields.items():
            text = str(value)
            if "\n" in text:
                raise ValueError(f"sd_notify {key}: a value cannot span lines")
            lines.append(f"{key}={text}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify %s failed: %s", ", ".join(fields), exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify(READY=1, STATUS=status, MAINPID=os.getpid())

    def stopping(self, status: str) -> bool:
        return self.notify(STOPPING=1, STATUS=status)

    def status(self, status: str) -> bool:
        return self.notify(STATUS=status)
