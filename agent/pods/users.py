"""Who a container runs as: the uid, gid and groups from the image's own files.

The kubelet sends a numeric ``run_as_user``, or a ``run_as_username``, or
nothing (the image's ``User`` applies); names are looked up in the image's
``/etc/passwd`` and ``/etc/group`` (read safely through the rootfs, see
``_util.securejoin``), as runc would see them inside the container.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent._util.securejoin import resolve_in_root
from agent.errors import InvalidArgument

__all__ = ["User", "resolve_user"]


@dataclass(frozen=True, slots=True)
class User:
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    username: str = ""
    home: str = "/"


def _read(root: str, path: str) -> list[list[str]]:
    try:
        with open(resolve_in_root(root, path), encoding="utf-8", errors="replace") as f:
            return [
                line.rstrip("\n").split(":")
                for line in f
                if line.strip() and not line.startswith("#")
            ]
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return []


def resolve_user(
    rootfs: str,
    *,
    image_user: str,
    run_as_user: int | None,
    run_as_username: str,
    run_as_group: int | None,
    supplemental_groups: tuple[int, ...],
    strict_groups: bool = False,
) -> User:
    """The effective user; an unknown user *name* is an error, unknown ids are fine.

    ``strict_groups`` (SupplementalGroupsPolicy ``Strict``): the groups are only the
    pod's ``supplemental_groups``, not the user's memberships in the image's /etc/group.
    """
    passwd = _read(rootfs, "/etc/passwd")
    group = _read(rootfs, "/etc/group")
    group_spec = ""
    if run_as_user is not None:
        user_spec = str(run_as_user)
    elif run_as_username:
        user_spec = run_as_username
    else:
        user_spec, _, group_spec = image_user.partition(":")
    entry = None
    if user_spec.isdigit():
        uid = int(user_spec)
        entry = next((e for e in passwd if len(e) >= 4 and e[2] == user_spec), None)
    elif user_spec:
        entry = next((e for e in passwd if len(e) >= 4 and e[0] == user_spec), None)
        if entry is None:
            raise InvalidArgument(f"user '{user_spec}' not found in the image's /etc/passwd")
        uid = int(entry[2])
    else:
        uid = 0
        entry = next((e for e in passwd if len(e) >= 4 and e[2] == "0"), None)
    gid = int(entry[3]) if entry is not None and entry[3].isdigit() else 0
    if group_spec:
        if group_spec.isdigit():
            gid = int(group_spec)
        else:
            found = next((g for g in group if len(g) >= 3 and g[0] == group_spec), None)
            if found is None:
                raise InvalidArgument(f"group '{group_spec}' not found in the image's /etc/group")
            gid = int(found[2])
    if run_as_group is not None:
        gid = run_as_group
    username = entry[0] if entry is not None else ""
    extra = [
        int(g[2])
        for g in group
        if not strict_groups
        and username
        and len(g) >= 4
        and username in g[3].split(",")
        and g[2].isdigit()
    ]
    extra.extend(supplemental_groups)
    groups = tuple(dict.fromkeys(g for g in extra if g != gid))
    home = entry[5] if entry is not None and len(entry) >= 6 and entry[5] else "/"
    return User(uid, gid, groups, username, home)
