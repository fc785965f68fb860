"""Layer tars built entry by entry, and the compressed blobs a registry stores.

Entries are plain descriptions (``File``, ``Dir``, ``Symlink``, ...) turned into a PAX tar
with ``tarfile``. Nothing is checked or cleaned: names with ``..``, absolute names and links
pointing anywhere are written as given, and ``Raw`` takes a ``TarInfo`` as is, so the same
builder makes the hostile layers an unpacker must refuse (see ``MALICIOUS``).

Everything is deterministic (fixed mtimes, gzip without a timestamp), so digests are stable
across runs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import zstandard

Compression = Literal["gzip", "zstd", "none"]
Flavor = Literal["oci", "docker"]
#: The default mtime of every entry (2023-11-14), so tars are byte-for-byte reproducible.
MTIME = 1_700_000_000
#: Layer media types by (flavor, compression); Docker has no zstd type.
MEDIA_TYPES: Mapping[tuple[Flavor, Compression], str] = {
    ("oci", "none"): "application/vnd.oci.image.layer.v1.tar",
    ("oci", "gzip"): "application/vnd.oci.image.layer.v1.tar+gzip",
    ("oci", "zstd"): "application/vnd.oci.image.layer.v1.tar+zstd",
    ("docker", "none"): "application/vnd.docker.image.rootfs.diff.tar",
    ("docker", "gzip"): "application/vnd.docker.image.rootfs.diff.tar.gzip",
}


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class File:
    """A regular file; ``xattrs`` become PAX ``SCHILY.xattr.<name>`` records."""

    path: str
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = MTIME
    xattrs: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Dir:
    path: str
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime: int = MTIME
    xattrs: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Symlink:
    path: str
    target: str
    uid: int = 0
    gid: int = 0
    mtime: int = MTIME


@dataclass(frozen=True)
class Hardlink:
    """A hard link to ``target``, an earlier entry's name (tar typeflag ``1``)."""

    path: str
    target: str
    uid: int = 0
    gid: int = 0
    mtime: int = MTIME


@dataclass(frozen=True)
class Device:
    path: str
    kind: Literal["char", "block"]
    major: int
    minor: int
    mode: int = 0o666
    uid: int = 0
    gid: int = 0
    mtime: int = MTIME


@dataclass(frozen=True)
class Fifo:
    path: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = MTIME


@dataclass(frozen=True)
class Whiteout:
    """Deletes ``path`` from lower layers: an empty file named ``<dir>/.wh.<basename>``."""

    path: str
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Opaque:
    """Hides every lower-layer child of ``dir``: an empty ``<dir>/.wh..wh..opq``."""

    dir: str


@dataclass(frozen=True)
class Sparse:
    """A GNU sparse file (PAX format 1.0) of ``size`` bytes; ``data`` maps offset to bytes.

    The holes cost nothing in the tar; readers that know the format (Go's archive/tar,
    Python's tarfile, GNU tar) restore ``size`` bytes with zeros in the holes.
    """

    path: str
    size: int
    data: Mapping[int, bytes]
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = MTIME


@dataclass(frozen=True)
class Raw:
    """A ``TarInfo`` written exactly as given, followed by ``data``."""

    info: tarfile.TarInfo
    data: bytes = b""


Entry = File | Dir | Symlink | Hardlink | Device | Fifo | Whiteout | Opaque | Sparse | Raw


def _info(name: str, kind: bytes, mode: int, uid: int, gid: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid = uid
    info.gid = gid
    info.mtime = mtime
    return info


def _xattr_headers(xattrs: Mapping[str, bytes]) -> dict[str, str]:
    # tarfile writes values that are not UTF-8 back as their bytes (hdrcharset=BINARY).
    return {
        f"SCHILY.xattr.{name}": value.decode("utf-8", "surrogateescape")
        for name, value in xattrs.items()
    }


def _sparse_member(entry: Sparse) -> tuple[tarfile.TarInfo, bytes]:
    """The PAX 1.0 encoding: a decimal map block, then the data segments, under a fake name."""
    segments = sorted(entry.data.items())
    numbers = [str(len(segments))]
    for offset, chunk in segments:
        numbers += [str(offset), str(len(chunk))]
    sparse_map = "".join(n + "\n" for n in numbers).encode()
    sparse_map += b"\0" * (-len(sparse_map) % tarfile.BLOCKSIZE)
    payload = sparse_map + b"".join(chunk for _, chunk in segments)
    directory, _, base = entry.path.rpartition("/")
    fake_name = f"{directory}/GNUSparseFile.0/{base}" if directory else f"GNUSparseFile.0/{base}"
    info = _info(fake_name, tarfile.REGTYPE, entry.mode, entry.uid, entry.gid, entry.mtime)
    info.size = len(payload)
    info.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": entry.path,
        "GNU.sparse.realsize": str(entry.size),
    }
    return info, payload


def _member(entry: Entry) -> tuple[tarfile.TarInfo, bytes]:
    match entry:
        case File():
            info = _info(entry.path, tarfile.REGTYPE, entry.mode, entry.uid, entry.gid, entry.mtime)
            info.size = len(entry.data)
            info.pax_headers = _xattr_headers(entry.xattrs)
            return info, entry.data
        case Dir():
            info = _info(entry.path, tarfile.DIRTYPE, entry.mode, entry.uid, entry.gid, entry.mtime)
            info.pax_headers = _xattr_headers(entry.xattrs)
            return info, b""
        case Symlink() | Hardlink():
            kind = tarfile.SYMTYPE if isinstance(entry, Symlink) else tarfile.LNKTYPE
            info = _info(entry.path, kind, 0o777, entry.uid, entry.gid, entry.mtime)
            info.linkname = entry.target
            return info, b""
        case Device():
            kind = tarfile.CHRTYPE if entry.kind == "char" else tarfile.BLKTYPE
            info = _info(entry.path, kind, entry.mode, entry.uid, entry.gid, entry.mtime)
            info.devmajor, info.devminor = entry.major, entry.minor
            return info, b""
        case Fifo():
            info = _info(
                entry.path, tarfile.FIFOTYPE, entry.mode, entry.uid, entry.gid, entry.mtime
            )
            return info, b""
        case Whiteout():
            directory, _, base = entry.path.rpartition("/")
            name = f"{directory}/.wh.{base}" if directory else f".wh.{base}"
            return _info(name, tarfile.REGTYPE, 0o644, entry.uid, entry.gid, MTIME), b""
        case Opaque():
            name = f"{entry.dir.rstrip('/')}/.wh..wh..opq"
            return _info(name, tarfile.REGTYPE, 0o644, 0, 0, MTIME), b""
        case Sparse():
            return _sparse_member(entry)
        case Raw():
            return entry.info, entry.data


def build_tar(entries: Iterable[Entry]) -> bytes:
    """An uncompressed PAX tar of ``entries``, in order, with nothing checked."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info, data = _member(entry)
            tar.addfile(info, io.BytesIO(data) if info.isfile() or data else None)
    return buffer.getvalue()


def truncated_tar(entries: Iterable[Entry]) -> bytes:
    """The tar of ``entries`` cut in the middle of its last member's data.

    The last entry must be a ``File`` with at least two bytes of data.
    """
    tar = build_tar(entries)
    with tarfile.open(fileobj=io.BytesIO(tar)) as reader:
        last = reader.getmembers()[-1]
    if last.size < 2:
        raise ValueError("the last entry needs at least two bytes of data to cut into")
    return tar[: last.offset_data + last.size // 2]


def compress(data: bytes, compression: Compression) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data)
    return data


@dataclass(frozen=True)
class Layer:
    """A layer as a registry stores it: ``blob`` is what is pushed, ``tar`` what it unpacks to."""

    tar: bytes
    blob: bytes
    compression: Compression

    @classmethod
    def from_tar(cls, tar: bytes, compression: Compression = "gzip") -> Layer:
        return cls(tar, compress(tar, compression), compression)

    @property
    def digest(self) -> str:
        """The blob's digest: what manifests reference and registries serve."""
        return sha256_digest(self.blob)

    @property
    def size(self) -> int:
        return len(self.blob)

    @property
    def diff_id(self) -> str:
        """The uncompressed tar's digest: what the image config lists in ``rootfs.diff_ids``."""
        return sha256_digest(self.tar)

    def media_type(self, flavor: Flavor = "oci") -> str:
        try:
            return MEDIA_TYPES[flavor, self.compression]
        except KeyError:
            raise ValueError(f"no {flavor} media type for a {self.compression} layer") from None

    def descriptor(self, flavor: Flavor = "oci") -> dict[str, object]:
        return {"mediaType": self.media_type(flavor), "digest": self.digest, "size": self.size}


def layer(entries: Iterable[Entry], compression: Compression = "gzip") -> Layer:
    """The layer whose tar holds ``entries``."""
    return Layer.from_tar(build_tar(entries), compression)


#: Where the escape attempts below aim on the host; a test asserts it never appears.
ESCAPE_NAME = "model-agent-layer-escape"

#: Hostile layers an unpacker must refuse or contain, by name (for ``parametrize``).
MALICIOUS: Mapping[str, tuple[Entry, ...]] = {
    "dotdot-name": (File(f"../../../../../../tmp/{ESCAPE_NAME}", b"escaped"),),
    "absolute-name": (File(f"/tmp/{ESCAPE_NAME}", b"escaped"),),
    "symlink-then-write-through": (
        Symlink("evil", "../../../../../../../../tmp"),
        File(f"evil/{ESCAPE_NAME}", b"escaped"),
    ),
    "absolute-symlink-then-write-through": (
        Symlink("evil", "/tmp"),
        File(f"evil/{ESCAPE_NAME}", b"escaped"),
    ),
    "hardlink-outside": (Hardlink("passwd", "../../etc/passwd"),),
    "absolute-hardlink": (Hardlink("passwd", "/etc/passwd"),),
    "whiteout-dotdot": (File(".wh..."),),  # "whiteout of .."
    "whiteout-nested-dotdot": (
        Dir("a"),
        File("a/.wh..."),
    ),
}
