"""The agent's CDI hook program: make a container's linker find the mounted driver libraries.

Run by the OCI runtime as a ``createContainer`` hook (the node CDI spec names
it; ``python -m agent.gpu.cdi.hook update-ldcache ...``). runc runs such hooks
in the container's mount namespace after the mounts are made and before
``pivot_root``, with the container state JSON on stdin. Like NVIDIA's
``nvidia-cdi-hook update-ldcache`` (which the agent cannot ship), it:

1. reads the bundle's ``config.json`` to find the container's root (refusing
   ``/``);
2. creates each ``--link TARGET::PATH`` symlink inside the root when PATH is
   free (``libcuda.so`` → ``libcuda.so.1``, the name some programs dlopen);
3. lists the ``--folder`` directories in ``/etc/ld.so.conf.d/00-model-agent-cdi.conf``
   of the root (or, when the image has no such directory, on the command line);
4. runs the host's ldconfig chrooted into the root (``-r``), which writes the
   soname links and the root's ``/etc/ld.so.cache``.

Paths inside the root are resolved within it, so a symlink in the image cannot
point a write outside the container. A failure exits non-zero with the reason
on stderr, which the runtime reports as the container's creation error.

This is a short-lived program of its own, not part of the asyncio agent: it runs
ldconfig with ``subprocess`` (explicit argv and timeout, stderr in the error) and
imports almost nothing, because every container given a GPU waits for it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence

from agent._util.securejoin import resolve_in_root

__all__ = ["container_root", "main", "update_ldcache"]

CONF_NAME = "00-model-agent-cdi.conf"
LDCONFIG_TIMEOUT = 30.0


class HookError(Exception):
    pass


def container_root(state: dict[str, object], spec_path: str = "") -> str:
    """The container's root directory on the host, from the state's bundle (or a spec file)."""
    bundle = str(state.get("bundle") or "")
    path = spec_path or os.path.join(bundle, "config.json")
    try:
        with open(path) as f:
            spec = json.load(f)
    except (OSError, ValueError) as exc:
        raise HookError(f"cannot read the container spec {path}: {exc}") from None
    root = str(spec.get("root", {}).get("path") or "")
    if not root:
        raise HookError(f"{path} names no root path")
    if not os.path.isabs(root):
        root = os.path.join(bundle or os.path.dirname(path), root)
    root = os.path.realpath(root)
    if root == "/":
        raise HookError("refusing to update the ld cache of the host's root")
    return root


def _make_links(root: str, links: Sequence[str]) -> None:
    for link in links:
        target, sep, path = link.partition("::")
        if not sep or not target or not os.path.isabs(path):
            raise HookError(f"--link {link!r}: expected TARGET::/ABSOLUTE/PATH")
        parent = resolve_in_root(root, os.path.dirname(path))
        where = os.path.join(parent, os.path.basename(path))
        if os.path.lexists(where):
            continue  # the image has one: leave it
        os.makedirs(parent, mode=0o755, exist_ok=True)
        os.symlink(target, where)


def _write_conf(root: str, folders: Sequence[str]) -> bool:
    """Write the ld.so.conf.d file; False when the image has no ld.so.conf.d to put it in."""
    conf_dir = resolve_in_root(root, "/etc/ld.so.conf.d")
    if not os.path.isdir(conf_dir):
        return False
    unique = list(dict.fromkeys(folders))
    path = os.path.join(conf_dir, CONF_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("".join(f"{folder}\n" for folder in unique))
    os.chmod(tmp, 0o644)  # readable by non-root container users
    os.replace(tmp, path)
    return True


def update_ldcache(
    root: str, folders: Sequence[str], ldconfig: str, links: Sequence[str] = ()
) -> None:
    for folder in folders:
        if not os.path.isabs(folder):
            raise HookError(f"--folder {folder}: must be an absolute path")
    if not os.path.isfile(ldconfig) or not os.access(ldconfig, os.X_OK):
        raise HookError(f"ldconfig {ldconfig} is not an executable file")
    _make_links(root, links)
    argv = [ldconfig, "-r", root]
    if os.path.isdir(resolve_in_root(root, "/etc")):
        # Explicit files: the host's ldconfig may default to others. -C creates the cache
        # when the image has none, so libraries outside the default dirs are found.
        argv += ["-f", "/etc/ld.so.conf", "-C", "/etc/ld.so.cache"]
    else:
        argv += ["-N"]  # nowhere to put a cache: just the soname links
    if folders and not _write_conf(root, folders):
        argv += list(dict.fromkeys(folders))
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=LDCONFIG_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise HookError(f"ldconfig did not finish within {LDCONFIG_TIMEOUT:g}s") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()[-2000:]
        raise HookError(f"ldconfig exited with {done.returncode}: {detail}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="model-agent-cdi-hook")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("update-ldcache", help="update the ld cache in a container's root")
    p.add_argument("--folder", action="append", default=[], help="a library dir (repeatable)")
    p.add_argument("--ldconfig-path", default="/sbin/ldconfig", help="the host's ldconfig")
    p.add_argument("--link", action="append", default=[], help="TARGET::PATH symlink to create")
    p.add_argument("--container-spec", default="", help="config.json (default: from stdin state)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        state: dict[str, object] = {}
        if not args.container_spec:
            raw = sys.stdin.read()
            state = json.loads(raw) if raw.strip() else {}
            if not isinstance(state, dict):
                raise HookError("the container state on stdin is not a JSON object")
        root = container_root(state, args.container_spec)
        update_ldcache(root, args.folder, args.ldconfig_path, args.link)
    except (HookError, OSError, ValueError) as exc:
        print(f"model-agent cdi hook update-ldcache: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
