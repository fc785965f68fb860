"""Image verbs: ``images pull inspecti rmi imagefsinfo``, and the pull ``create`` uses.

As crictl's ``image.go``: ``rmi --prune`` (``-q``) removes every image no
container uses and that is not pinned, ``rmi -a`` every image; removals print
``Deleted: <tag>`` per tag. ``pull`` on a terminal draws a progress bar from
the agent's in-flight pulls (verbose ``Status``, key ``pulls``), which the CRI
has no channel for. ``agent.images`` (for reference parsing) is imported only
there, so other verbs do not pay for the whole images package at start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import sys
from collections.abc import Mapping
from typing import Any

import grpc

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.ctl.client import CriClient
from agent.ctl.manifests import load_pod_config
from agent.ctl.output import FORMATS, Table, emit, human_size, message_dict, status_document
from agent.ctl.verb import (
    Verbs,
    add_output_flag,
    duration_seconds,
    for_each,
    output_format,
    parse_labels,
)
from agent.errors import InvalidArgument, NotFound

__all__ = ["add_auth_flags", "auth_from_args", "progress_line", "pull_image", "register"]


def add_auth_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--creds", metavar="USERNAME[:PASSWORD]", help="registry credentials")
    p.add_argument("--auth", metavar="AUTH_STRING", help="base64 of USERNAME[:PASSWORD]")
    p.add_argument("-u", "--username", help="registry user; the password is asked for")
    p.add_argument(
        "--pull-timeout",
        type=duration_seconds,
        default=0.0,
        help="give up the pull after this long (default: no limit)",
    )


def auth_from_args(args: argparse.Namespace) -> pb.AuthConfig | None:
    """crictl's ``getAuth``: ``--username`` (password prompted), ``--creds`` or ``--auth``."""
    if args.username:
        return pb.AuthConfig(username=args.username, password=getpass.getpass("Enter Password:"))
    if args.creds and args.auth:
        raise InvalidArgument("both `--creds` and `--auth` are specified")
    if args.creds:
        user, _, password = args.creds.partition(":")
        if not user:
            raise InvalidArgument("username can't be empty")
        return pb.AuthConfig(username=user, password=password)
    if args.auth:
        return pb.AuthConfig(auth=args.auth)
    return None


async def pull_image(
    cri: CriClient,
    image: str,
    *,
    auth: pb.AuthConfig | None = None,
    sandbox: pb.PodSandboxConfig | None = None,
    annotations: dict[str, str] | None = None,
    timeout: float = 0.0,
    progress: bool = False,
) -> pb.PullImageResponse:
    request = pb.PullImageRequest(image=pb.ImageSpec(image=image, annotations=annotations or {}))
    if auth is not None:
        request.auth.CopyFrom(auth)
    if sandbox is not None:
        request.sandbox_config.CopyFrom(sandbox)
    # No deadline unless asked (as from the kubelet); the agent fails stalled pulls itself.
    pulling = asyncio.ensure_future(cri.images.PullImage(request, timeout=timeout or None))
    if progress:
        await _show_progress(cri, image, pulling)
    return await pulling


async def _show_progress(cri: CriClient, image: str, pulling: asyncio.Future[Any]) -> None:
    """Draw a progress bar from the agent's in-flight pulls until the pull returns."""
    from agent.images import reference  # only here: it imports the whole images package

    try:
        wanted = str(reference.parse(image))
    except InvalidArgument:
        return  # the pull itself will report the bad reference
    drawn = False
    while not pulling.done():
        with contextlib.suppress(grpc.aio.AioRpcError):
            status = await cri.runtime.Status(pb.StatusRequest(verbose=True), timeout=5)
            for pull in json.loads(status.info.get("pulls", "[]")):
                if pull.get("image") == wanted:
                    sys.stderr.write("\r" + progress_line(pull))
                    sys.stderr.flush()
                    drawn = True
        await asyncio.wait({pulling}, timeout=0.5)
    if drawn:
        sys.stderr.write("\n")


def progress_line(pull: dict[str, Any], width: int = 30) -> str:
    """``image [#####.....]  45%  1.2/3.1 GB  2/5 layers``."""
    total, done = int(pull.get("bytesTotal", 0)), int(pull.get("bytesDone", 0))
    fraction = min(1.0, done / total) if total else 0.0
    bar = "#" * int(fraction * width) + "." * (width - int(fraction * width))
    return (
        f"{pull.get('image', '')} [{bar}] {fraction * 100:3.0f}%  "
        f"{done / 1e9:.2f}/{total / 1e9:.2f} GB  "
        f"{pull.get('layersDone', 0)}/{pull.get('layersTotal', 0)} layers"
    )


async def _pull(cri: CriClient, args: argparse.Namespace) -> int:
    fmt = output_format(args, "table", FORMATS)
    sandbox = load_pod_config(args.pod_config) if args.pod_config else None
    resp = await pull_image(
        cri,
        args.image,
        auth=auth_from_args(args),
        sandbox=sandbox,
        annotations=parse_labels(args.annotation),
        timeout=args.pull_timeout,
        progress=sys.stderr.isatty() and fmt == "table",
    )
    if fmt != "table":
        emit(resp, fmt)
    else:
        print(f"Image is up to date for {resp.image_ref}")
    return 0


def _sort_key(image: pb.Image) -> tuple[str, str, str]:
    return (
        image.repo_tags[0] if image.repo_tags else "",
        image.repo_digests[0] if image.repo_digests else "",
        image.id,
    )


def repo_tag_pairs(image: pb.Image) -> list[tuple[str, str]]:
    """crictl's IMAGE/TAG columns: a digest-only image shows its name and ``<none>``."""
    name = image.repo_digests[0].partition("@")[0] if image.repo_digests else "<none>"
    if not image.repo_tags:
        return [(name, "<none>")]
    pairs = []
    for ref in image.repo_tags:
        repo, sep, tag = ref.rpartition(":")
        pairs.append((repo if repo != "<none>" else name, tag) if sep else ("errorRepoTag",) * 2)
    return pairs


async def _list_images(cri: CriClient, name: str = "") -> list[pb.Image]:
    req = pb.ListImagesRequest()
    if name:
        req.filter.image.image = name
    resp = await cri.images.ListImages(req, timeout=cri.timeout)
    return sorted(resp.images, key=_sort_key)


async def _images(cri: CriClient, args: argparse.Namespace) -> int:
    fmt = output_format(args, "table", FORMATS)
    images = await _list_images(cri, args.image or "")
    if fmt != "table":
        emit(pb.ListImagesResponse(images=images), fmt)
        return 0
    if args.quiet:
        for image in images:
            print(image.id)
        return 0
    header = ["IMAGE", "TAG", *(["DIGEST"] if args.digests else []), "IMAGE ID", "SIZE"]
    table = Table([*header, *(["PINNED"] if args.pinned else [])])
    for image in images:
        digest = image.repo_digests[0].partition("@")[2] if image.repo_digests else "<none>"
        image_id = image.id
        if not args.no_trunc:
            image_id = image_id.removeprefix("sha256:")[:13]
            digest = digest.removeprefix("sha256:")[:13]
        for repo, tag in repo_tag_pairs(image):
            row = [repo, tag, *([digest] if args.digests else []), image_id]
            row.append(human_size(image.size, 3))
            table.add([*row, *([str(image.pinned).lower()] if args.pinned else [])])
    table.write()
    return 0


async def _status(cri: CriClient, image: str, verbose: bool = False) -> pb.ImageStatusResponse:
    return await cri.images.ImageStatus(
        pb.ImageStatusRequest(image=pb.ImageSpec(image=image), verbose=verbose),
        timeout=cri.timeout,
    )


async def _inspecti(cri: CriClient, args: argparse.Namespace) -> int:
    fmt = output_format(args, "json", FORMATS)
    documents = []
    for name in args.images:
        resp = await _status(cri, name, verbose=not args.quiet)
        if not resp.HasField("image"):
            raise NotFound(f"no such image {name!r} present")
        if fmt == "table":
            print(f"ID: {resp.image.id}")
            for tag in resp.image.repo_tags:
                print(f"Tag: {tag}")
            for digest in resp.image.repo_digests:
                print(f"Digest: {digest}")
            print(f"Size: {human_size(resp.image.size, 3)}")
            if not args.quiet:
                _print_labels(resp.info)
                print(f"Info: {dict(resp.info)}")
            continue
        documents.append(status_document(message_dict(resp.image), resp.info))
    if documents:
        emit(documents[0] if len(documents) == 1 else documents, fmt, sort_keys=True)
    return 0


def _print_labels(info: Mapping[str, str]) -> None:
    """The image's labels (an artifact's annotations): a model image's say what it serves."""
    try:
        details = json.loads(info.get("info", "{}"))
    except ValueError:
        return
    if details.get("artifactType"):
        print(f"Artifact: {details['artifactType']}")
    for key, value in sorted((details.get("labels") or {}).items()):
        print(f"Label: {key}={value}")


async def _images_in_use(cri: CriClient) -> set[str]:
    containers = await cri.runtime.ListContainers(pb.ListContainersRequest(), timeout=cri.timeout)
    used = set()
    for c in containers.containers:
        with contextlib.suppress(grpc.aio.AioRpcError):
            status = await _status(cri, c.image.image)
            if status.HasField("image"):
                used.add(status.image.id)
    return used


async def _rmi(cri: CriClient, args: argparse.Namespace) -> int:
    targets = dict.fromkeys(args.images, True)
    if args.all or args.prune:
        for image in await _list_images(cri):
            if args.prune and image.pinned:
                continue
            targets[image.id] = True
    if args.prune:
        for image_id in await _images_in_use(cri):
            if image_id in targets:
                targets[image_id] = False
    chosen = [name for name, remove in targets.items() if remove]
    if not chosen:
        if args.all or args.prune:
            print("No images to remove", file=sys.stderr)
            return 0
        raise InvalidArgument("give at least one IMAGE, or --all / --prune")

    async def remove(name: str) -> None:
        status = await _status(cri, name)
        if not status.HasField("image"):
            raise NotFound(f"no such image {name}")
        try:
            await cri.images.RemoveImage(
                pb.RemoveImageRequest(image=pb.ImageSpec(image=name)), timeout=cri.timeout
            )
        except grpc.aio.AioRpcError:
            if args.prune:
                return  # as crictl: a prune races with new containers; skip what is now used
            raise
        for ref in status.image.repo_tags or status.image.repo_digests:
            print(f"Deleted: {ref}", flush=True)

    return await for_each(chosen, remove, "removing image")


def _fs_table(title: str, filesystems: list[pb.FilesystemUsage]) -> None:
    print(f"{title} Filesystem ")
    for i, fs in enumerate(filesystems):
        print(f"TimeStamp[{i}]: {fs.timestamp}")
        print(f"Disk[{i}]: {human_size(fs.used_bytes.value)}")
        print(f"Inodes[{i}]: {fs.inodes_used.value}")
        print(f"Mountpoint[{i}]: {fs.fs_id.mountpoint}")


async def _imagefsinfo(cri: CriClient, args: argparse.Namespace) -> int:
    fmt = output_format(args, "json", FORMATS)
    resp = await cri.images.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=cri.timeout)
    if fmt == "table":
        _fs_table("Container", list(resp.container_filesystems))
        _fs_table("Image", list(resp.image_filesystems))
        return 0
    emit(status_document(message_dict(resp), {}), fmt, sort_keys=True)
    return 0


def register(verbs: Verbs) -> None:
    p = verbs.add("images", _images, "list images", aliases=("image", "img"))
    p.add_argument("image", nargs="?", metavar="REPOSITORY[:TAG]")
    p.add_argument("-q", "--quiet", action="store_true", help="only image ids")
    p.add_argument("--digests", action="store_true", help="show digests")
    p.add_argument("--no-trunc", action="store_true", help="full ids")
    p.add_argument("--pinned", action="store_true", help="show whether pinned")
    add_output_flag(p, FORMATS)

    p = verbs.add("pull", _pull, "pull an image")
    p.add_argument("image", metavar="NAME[:TAG|@DIGEST]")
    add_auth_flags(p)
    p.add_argument("--pod-config", help="pod-config.[json|yaml] sent as the sandbox config")
    p.add_argument("-a", "--annotation", action="append", default=[], metavar="KEY=VALUE")
    add_output_flag(p, FORMATS)

    p = verbs.add("inspecti", _inspecti, "image status (JSON unless -o)")
    p.add_argument("-q", "--quiet", action="store_true", help="without the verbose info")
    add_output_flag(p, FORMATS)
    p.add_argument("images", nargs="+", metavar="IMAGE")

    p = verbs.add("rmi", _rmi, "remove images (-a: all, --prune/-q: all unused)")
    p.add_argument("-a", "--all", action="store_true", help="every image")
    p.add_argument(
        "-q", "--prune", action="store_true", help="every image no container uses (not pinned)"
    )
    p.add_argument("images", nargs="*", metavar="IMAGE")

    p = verbs.add("imagefsinfo", _imagefsinfo, "image and container filesystem usage")
    add_output_flag(p, FORMATS)
