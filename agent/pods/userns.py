"""A pod's user namespace (``hostUsers: false``): made with the kubelet's maps, pinned.

The namespace is made first, pinned at ``<state_dir>/userns/<sandbox id>``, and
everything of the pod joins it: its network namespace is created inside it (so
the pod's root may mount sysfs and configure nothing but its own network), the
infra process and every container join it through runc's ``path``, and image
layers and id-mapped volumes are presented through idmapped mounts made with it
(``mounts.bind_special``). Nothing is chowned but the empty writable layer.
"""

from __future__ import annotations

import os

from agent._util.nspin import pin_new_namespace, unpin
from agent.pods.model import UserNamespace

__all__ = ["UsernsPins"]


def _write_maps(pid: int, userns: UserNamespace) -> None:
    for name, maps in (("uid_map", userns.uids), ("gid_map", userns.gids)):
        text = "".join(f"{m.container_id} {m.host_id} {m.length}\n" for m in maps)
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(text)


class UsernsPins:
    def __init__(self, pin_dir: str) -> None:
        self.pin_dir = pin_dir

    def path(self, sandbox_id: str) -> str:
        return os.path.join(self.pin_dir, sandbox_id)

    async def create(self, sandbox_id: str, userns: UserNamespace) -> str:
        """The pod's new user namespace with the kubelet's maps, pinned; its path."""
        os.makedirs(self.pin_dir, mode=0o711, exist_ok=True)
        path = self.path(sandbox_id)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444))
        try:
            await pin_new_namespace(
                ["unshare", "--user", "sleep", "60"],
                "user",
                path,
                setup=lambda pid: _write_maps(pid, userns),
            )
        except BaseException:
            unpin(path)
            raise
        return path

    def remove(self, sandbox_id: str) -> None:
        unpin(self.path(sandbox_id))

    def leftovers(self, keep: set[str]) -> list[str]:
        """Pins of sandboxes not in ``keep`` (recovery removes them)."""
        try:
            names = os.listdir(self.pin_dir)
        except FileNotFoundError:
            return []
        return [n for n in names if n not in keep]
