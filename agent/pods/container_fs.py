"""A new container's filesystem: its rootfs overlay and the mounts staged for runc.

    rootfs:          the image's layers (idmapped binds of them in a user-namespaced pod)
                     under the container's writable layer, as one overlay
    image volumes:   an image's (or artifact's) content read-only: its one layer bound, or
                     an overlay of its layers with no upper dir; nothing is copied
    special volumes: recursive read-only and id-mapped binds, made here for every handler

Everything lives under the container's state dir, so ``Mounter.unmount_tree`` of that
dir undoes it. ``ContainerManager`` owns the order (and the undo stack).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Protocol

from agent._util.securejoin import resolve_in_root
from agent.errors import FailedPrecondition, InvalidArgument, NotFound
from agent.images import ImageRecord
from agent.pods.model import ContainerConfig, Mount
from agent.pods.mounts import Mounter
from agent.pods.state import SandboxRecord

__all__ = ["ContainerFilesystem", "ImageSource"]


class ImageSource(Protocol):
    """What containers need of the image store (``images.ImageStore``)."""

    def find(self, text: str) -> ImageRecord | None: ...

    def layer_dirs(self, image: ImageRecord) -> tuple[str, list[str]]: ...


def _refuse_mounts_over_the_root(rootfs: str, config: ContainerConfig) -> None:
    """A target that a link in the image resolves to ``/`` (``cri.validate`` refuses
    the plain spellings): runc would mount over the container's whole root, and make
    its ``dev/ proc/ sys/`` inside the volume's host directory before failing."""
    root = os.path.realpath(rootfs)
    for i, mount in enumerate(config.mounts):
        try:
            resolved = resolve_in_root(root, mount.container_path)
        except OSError:
            continue  # runc says what is wrong with such a path
        if resolved == root:
            raise InvalidArgument(
                f"config.mounts[{i}]: container_path '{mount.container_path}' resolves to "
                "the container's root filesystem (through a link in the image)"
            )


class ContainerFilesystem:
    def __init__(self, state: str, *, mounter: Mounter, images: ImageSource) -> None:
        self._state = state
        self._mounter = mounter
        self._images = images

    def _rootfs(self, cid: str) -> str:
        return os.path.join(self._state, cid, "rootfs")

    async def mount_rootfs(
        self, cid: str, sandbox: SandboxRecord, image: ImageRecord, upper: str, work: str
    ) -> None:
        """The image's layers under the container's writable layer, as one overlay.

        In a user-namespaced pod each layer is an idmapped bind of its snapshot (its files
        appear owned by the container's own ids, nothing is copied or chowned), and the
        empty upper and work dirs belong to the container's root.
        """
        lower_root, lowers = self._images.layer_dirs(image)
        userns = sandbox.config.security.namespaces.userns
        if userns is not None:
            layers = os.path.join(self._state, cid, "layers")
            mapped = []
            for i, lower in enumerate(lowers):
                target = os.path.join(layers, str(i))
                os.makedirs(target)
                await self._mounter.bind_special(
                    os.path.join(lower_root, lower), target, userns=sandbox.userns
                )
                mapped.append(str(i))
            for path in (upper, work):
                os.chown(path, userns.root_uid, userns.root_gid)
            lower_root, lowers = layers, mapped
        await self._mounter.overlay(
            self._rootfs(cid), lower_root=lower_root, lowers=lowers, upper=upper, work=work
        )

    async def stage_mounts(
        self,
        cid: str,
        sandbox: SandboxRecord,
        config: ContainerConfig,
        image_ids: Mapping[str, str],
    ) -> ContainerConfig:
        """Volumes made here rather than by the handler (runc 1.1 cannot id-map; "rro"
        depends on its version): recursive read-only ones and id-mapped ones. The spec
        then binds the staged mount; the record keeps the kubelet's host path."""
        _refuse_mounts_over_the_root(self._rootfs(cid), config)
        mounts = []
        for i, mount in enumerate(config.mounts):
            if mount.image:
                image = self._images.find(image_ids[mount.image])
                assert image is not None  # held by the create since image_volume_ids
                source = await self._mount_image_volume(cid, i, sandbox, mount, image)
                mounts.append(replace(mount, host_path=source))
                continue
            if not (mount.recursive_read_only or mount.uid_mappings):
                mounts.append(mount)
                continue
            staged = os.path.join(self._state, cid, "volumes", str(i))
            _make_target(staged, directory=_is_dir(mount.host_path))
            try:
                await self._mounter.bind_special(
                    mount.host_path,
                    staged,
                    readonly=mount.recursive_read_only,
                    userns=sandbox.userns if mount.uid_mappings else "",
                )
            except FailedPrecondition as exc:  # name the volume, not only its host path
                raise FailedPrecondition(
                    f"config.mounts[{i}] {mount.container_path}: {exc}"
                ) from None
            mounts.append(replace(mount, host_path=staged))
        return replace(config, mounts=tuple(mounts))

    def image_volume_ids(self, config: ContainerConfig) -> dict[str, str]:
        """The image id of every image volume (each must be pulled: the kubelet does)."""
        ids = {}
        for i, mount in enumerate(config.mounts):
            if not mount.image:
                continue
            found = self._images.find(mount.image)
            if found is None:
                raise NotFound(
                    f"config.mounts[{i}]: image '{mount.image}' of an image volume not found; "
                    "pull it first"
                )
            ids[mount.image] = found.id
        return ids

    async def _mount_image_volume(
        self, cid: str, index: int, sandbox: SandboxRecord, mount: Mount, image: ImageRecord
    ) -> str:
        """An image's content, read-only (nosuid, nodev) under the container's state dir:
        its one layer's snapshot bound, or an overlay of its layers with no upper dir
        (idmapped in a user-namespaced pod); ``image_sub_path`` inside it. No copy.
        ``image`` is the one ``image_volume_ids`` found, by id: a pull that moved the tag
        since changes neither what is mounted nor what the create holds."""
        lower_root, lowers = self._images.layer_dirs(image)
        base = os.path.join(self._state, cid, "images", str(index))
        userns = sandbox.userns if sandbox.config.security.namespaces.userns else ""
        if not lowers:  # an artifact with no layers: an empty read-only directory
            empty = os.path.join(self._state, cid, "images", f"{index}-empty")
            _make_target(empty, directory=True)
            lower_root, lowers = empty, ["."]
        if len(lowers) == 1:
            _make_target(base, directory=True)
            await self._mounter.bind_special(
                os.path.join(lower_root, lowers[0]),
                base,
                readonly=True,
                userns=userns,
                no_devices=True,
            )
        else:
            if userns:
                mapped_root = os.path.join(self._state, cid, "images", f"{index}-layers")
                mapped = []
                for i, lower in enumerate(lowers):
                    _make_target(os.path.join(mapped_root, str(i)), directory=True)
                    await self._mounter.bind_special(
                        os.path.join(lower_root, lower),
                        os.path.join(mapped_root, str(i)),
                        userns=userns,
                    )
                    mapped.append(str(i))
                lower_root, lowers = mapped_root, mapped
            _make_target(base, directory=True)
            await self._mounter.overlay(
                base, lower_root=lower_root, lowers=lowers, upper="", work=""
            )
        if not mount.image_sub_path:
            return base
        source = resolve_in_root(base, mount.image_sub_path)
        if not _exists_path(source):
            raise InvalidArgument(
                f"image volume {mount.image}: image_sub_path '{mount.image_sub_path}' does not "
                "exist in the image"
            )
        return source


def _is_dir(path: str) -> bool:
    return os.path.isdir(path)


def _make_target(path: str, *, directory: bool) -> None:
    """An empty dir or file to mount on (a mount's target matches its source's type)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if directory:
        os.mkdir(path)
    else:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _exists_path(path: str) -> bool:
    return os.path.lexists(path)
