"""The CDI spec model (versions 0.3.0-1.1.0), parsed strictly from JSON or YAML.

Keys and types follow ``specs-go/config.go``; like the reference library the
parser refuses unknown keys, values of the wrong type, and a ``cdiVersion``
lower than the fields used need (``type`` in mounts 0.4.0; ``hostPath`` in
device nodes or a device name starting with a digit 0.5.0; annotations or a
``.`` in the class 0.6.0; ``intelRdt`` and ``additionalGids`` 0.7.0;
``netDevices`` and ``intelRdt.schemata``/``enableMonitoring`` 1.1.0, which drops
``enableCMT``/``enableMBM``). Top-level ``containerEdits`` is an object (the Go
type), applied once when any device of the spec is requested.

Parsing checks what a file can get wrong on its own; what depends on the host
at container creation (device nodes exist, hook binaries exist, paths are
absolute and under ``/dev``) is checked by ``cdi.edits`` for the devices a
container asks for. ``spec_to_dict`` is the inverse, for the specs the agent
writes. Imports only ``cdi.names``.

Size: the whole spec model, a dataclass per Go type with its parser and the
version its fields need; split, a field and its version rule would live apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from agent.gpu.cdi.names import check_device_name, parse_kind

__all__ = [
    "KNOWN_VERSIONS",
    "ContainerEdits",
    "Device",
    "DeviceNode",
    "Hook",
    "IntelRdt",
    "Mount",
    "NetDevice",
    "Spec",
    "SpecError",
    "minimum_version",
    "parse_spec",
    "spec_to_dict",
]

#: Versions the reference library accepts (0.1/0.2 had another schema), oldest first.
KNOWN_VERSIONS = ("0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0")
HOOK_NAMES = (
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
)


class SpecError(ValueError):
    """A spec file that cannot be used; the message names the key."""


@dataclass(frozen=True, slots=True)
class DeviceNode:
    path: str
    host_path: str = ""
    type: str = ""  # b, c, u, p; "" = from the host
    major: int = 0  # 0 = from the host (as the reference library)
    minor: int = 0
    file_mode: int | None = None
    permissions: str = ""  # subset of rwm; "" = rwm
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True, slots=True)
class Mount:
    host_path: str
    container_path: str
    options: tuple[str, ...] = ()
    type: str = ""


@dataclass(frozen=True, slots=True)
class Hook:
    hook_name: str
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None


@dataclass(frozen=True, slots=True)
class IntelRdt:
    clos_id: str = ""
    l3_cache_schema: str = ""
    mem_bw_schema: str = ""
    schemata: tuple[str, ...] = ()
    enable_monitoring: bool = False
    enable_cmt: bool = False  # < 1.1.0
    enable_mbm: bool = False  # < 1.1.0


@dataclass(frozen=True, slots=True)
class NetDevice:
    host_interface_name: str
    name: str


@dataclass(frozen=True, slots=True)
class ContainerEdits:
    env: tuple[str, ...] = ()
    device_nodes: tuple[DeviceNode, ...] = ()
    mounts: tuple[Mount, ...] = ()
    hooks: tuple[Hook, ...] = ()
    additional_gids: tuple[int, ...] = ()
    intel_rdt: IntelRdt | None = None
    net_devices: tuple[NetDevice, ...] = ()

    def is_empty(self) -> bool:
        return not (
            self.env
            or self.device_nodes
            or self.mounts
            or self.hooks
            or self.additional_gids
            or self.intel_rdt
            or self.net_devices
        )

    def merged(self, other: ContainerEdits) -> ContainerEdits:
        """``self`` then ``other`` (the reference ``Append``; a later intelRdt wins)."""
        return ContainerEdits(
            env=self.env + other.env,
            device_nodes=self.device_nodes + other.device_nodes,
            mounts=self.mounts + other.mounts,
            hooks=self.hooks + other.hooks,
            additional_gids=self.additional_gids + other.additional_gids,
            intel_rdt=other.intel_rdt or self.intel_rdt,
            net_devices=self.net_devices + other.net_devices,
        )


@dataclass(frozen=True, slots=True)
class Device:
    name: str
    edits: ContainerEdits
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Spec:
    version: str
    kind: str
    devices: tuple[Device, ...]
    edits: ContainerEdits = field(default_factory=ContainerEdits)
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def vendor(self) -> str:
        return self.kind.partition("/")[0]

    @property
    def device_class(self) -> str:
        return self.kind.partition("/")[2]


# ---------------------------------------------------------------------------
# Parsing


class _Obj:
    """One JSON object of the file: typed reads, and unknown keys refused by path."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise SpecError(f"{where}: expected an object, got {_type(data)}")
        self.data = data
        self.where = where
        self.seen: set[str] = set()

    def _raw(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key)

    def string(self, key: str, *, required: bool = False) -> str:
        value = self._raw(key)
        if value is None:
            if required:
                raise SpecError(f"{self.where}: '{key}' is required")
            return ""
        if not isinstance(value, str):
            raise SpecError(f"{self.where}.{key}: expected a string, got {_type(value)}")
        return value

    def integer(self, key: str, *, minimum: int | None = None) -> int | None:
        value = self._raw(key)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON numbers through YAML
        if not isinstance(value, int) or isinstance(value, bool):
            raise SpecError(f"{self.where}.{key}: expected an integer, got {_type(value)}")
        if minimum is not None and value < minimum:
            raise SpecError(f"{self.where}.{key}: must be at least {minimum}")
        return value

    def boolean(self, key: str) -> bool:
        value = self._raw(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise SpecError(f"{self.where}.{key}: expected a boolean, got {_type(value)}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._raw(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SpecError(f"{self.where}.{key}: expected a list of strings")
        return tuple(value)

    def integers(self, key: str) -> tuple[int, ...]:
        """A list of uint32 (additionalGids)."""
        value = self._raw(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32 for v in value
        ):
            raise SpecError(f"{self.where}.{key}: expected a list of unsigned 32-bit integers")
        return tuple(value)

    def objects(self, key: str) -> list[_Obj]:
        value = self._raw(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise SpecError(f"{self.where}.{key}: expected a list, got {_type(value)}")
        return [_Obj(item, f"{self.where}.{key}[{i}]") for i, item in enumerate(value)]

    def obj(self, key: str) -> _Obj | None:
        value = self._raw(key)
        return None if value is None else _Obj(value, f"{self.where}.{key}")

    def mapping(self, key: str) -> dict[str, str]:
        value = self._raw(key)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise SpecError(f"{self.where}.{key}: expected a map of strings to strings")
        for k in value:
            if not k or len(k) > 316:
                raise SpecError(f"{self.where}.{key}: invalid annotation key '{k}'")
        return dict(value)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise SpecError(f"{self.where}: unknown field '{unknown[0]}'")


def _type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _env(values: tuple[str, ...], where: str) -> tuple[str, ...]:
    for value in values:
        if value.find("=") <= 0:
            raise SpecError(f"{where}: invalid environment variable '{value}'")
    return values


def _device_node(o: _Obj) -> DeviceNode:
    node = DeviceNode(
        path=o.string("path", required=True),
        host_path=o.string("hostPath"),
        type=o.string("type"),
        major=o.integer("major") or 0,
        minor=o.integer("minor") or 0,
        file_mode=o.integer("fileMode", minimum=0),
        permissions=o.string("permissions"),
        uid=o.integer("uid", minimum=0),
        gid=o.integer("gid", minimum=0),
    )
    o.done()
    if not node.path:
        raise SpecError(f"{o.where}: empty device path")
    if node.type not in ("", "b", "c", "u", "p"):
        raise SpecError(f"{o.where}: device {node.path}: invalid type '{node.type}'")
    if not set(node.permissions) <= set("rwm"):
        raise SpecError(f"{o.where}: device {node.path}: invalid permissions '{node.permissions}'")
    return node


def _mount(o: _Obj) -> Mount:
    mount = Mount(
        host_path=o.string("hostPath", required=True),
        container_path=o.string("containerPath", required=True),
        options=o.strings("options"),
        type=o.string("type"),
    )
    o.done()
    if not mount.host_path or not mount.container_path:
        raise SpecError(f"{o.where}: a mount needs hostPath and containerPath")
    return mount


def _hook(o: _Obj) -> Hook:
    hook = Hook(
        hook_name=o.string("hookName", required=True),
        path=o.string("path", required=True),
        args=o.strings("args"),
        env=_env(o.strings("env"), f"{o.where}.env"),
        timeout=o.integer("timeout"),
    )
    o.done()
    if hook.hook_name not in HOOK_NAMES:
        raise SpecError(f"{o.where}: invalid hook name '{hook.hook_name}'")
    if not hook.path:
        raise SpecError(f"{o.where}: hook {hook.hook_name} has an empty path")
    if hook.timeout is not None and hook.timeout <= 0:
        raise SpecError(f"{o.where}.timeout: must be greater than zero")
    return hook


def _intel_rdt(o: _Obj) -> IntelRdt:
    rdt = IntelRdt(
        clos_id=o.string("closID"),
        l3_cache_schema=o.string("l3CacheSchema"),
        mem_bw_schema=o.string("memBwSchema"),
        schemata=o.strings("schemata"),
        enable_monitoring=o.boolean("enableMonitoring"),
        enable_cmt=o.boolean("enableCMT"),
        enable_mbm=o.boolean("enableMBM"),
    )
    o.done()
    clos = rdt.clos_id
    if len(clos) >= 4096 or clos in (".", "..") or "/" in clos or "\n" in clos:
        raise SpecError(f"{o.where}.closID: invalid '{clos}'")
    return rdt


def _edits(o: _Obj | None) -> ContainerEdits:
    if o is None:
        return ContainerEdits()
    gids = o.integers("additionalGids")
    rdt = o.obj("intelRdt")
    net = []
    for n in o.objects("netDevices"):
        net.append(
            NetDevice(n.string("hostInterfaceName", required=True), n.string("name", required=True))
        )
        n.done()
        if not net[-1].host_interface_name or not net[-1].name:
            raise SpecError(f"{n.where}: a net device needs hostInterfaceName and name")
    edits = ContainerEdits(
        env=_env(o.strings("env"), f"{o.where}.env"),
        device_nodes=tuple(_device_node(d) for d in o.objects("deviceNodes")),
        mounts=tuple(_mount(m) for m in o.objects("mounts")),
        hooks=tuple(_hook(h) for h in o.objects("hooks")),
        additional_gids=gids,
        intel_rdt=_intel_rdt(rdt) if rdt is not None else None,
        net_devices=tuple(net),
    )
    o.done()
    return edits


def _load(data: bytes, path: str) -> Any:
    text = data.decode("utf-8")
    if path.endswith(".json"):
        return json.loads(text)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(text, Loader=loader)  # a safe loader: plain data only


def parse_spec(data: bytes, path: str = "<spec>.json") -> Spec:
    """A spec from file contents (JSON for ``*.json``, else YAML); ``SpecError`` says why not."""
    try:
        raw = _load(data, path)
    except (ValueError, yaml.YAMLError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise SpecError(
            f"not valid {'JSON' if path.endswith('.json') else 'YAML'}: {exc}"
        ) from None
    top = _Obj(raw, "spec")
    version = top.string("cdiVersion", required=True)
    kind = top.string("kind", required=True)
    if version.removeprefix("v") not in KNOWN_VERSIONS:
        raise SpecError(f"cdiVersion: unsupported version '{version}'")
    version = version.removeprefix("v")
    try:
        parse_kind(kind)
    except ValueError as exc:
        raise SpecError(f"kind: {exc}") from None
    annotations = top.mapping("annotations")
    devices = []
    names: set[str] = set()
    raw_devices = top.objects("devices")
    if not raw_devices:
        raise SpecError("devices: a spec needs at least one device")
    for d in raw_devices:
        name = d.string("name", required=True)
        try:
            check_device_name(name)
        except ValueError as exc:
            raise SpecError(f"{d.where}.name: {exc}") from None
        if name in names:
            raise SpecError(f"{d.where}: device '{name}' is defined twice")
        names.add(name)
        edits = _edits(d.obj("containerEdits"))
        device = Device(name, edits, d.mapping("annotations"))
        d.done()
        if edits.is_empty():
            raise SpecError(f"{d.where}: device '{name}' has empty container edits")
        devices.append(device)
    spec = Spec(version, kind, tuple(devices), _edits(top.obj("containerEdits")), annotations)
    top.done()
    _check_version(spec)
    return spec


# ---------------------------------------------------------------------------
# Versions


def _vkey(version: str) -> int:
    return KNOWN_VERSIONS.index(version)


def _all_edits(spec: Spec) -> list[ContainerEdits]:
    return [spec.edits, *(d.edits for d in spec.devices)]


def minimum_version(spec: Spec) -> str:
    """The lowest ``cdiVersion`` that allows every field ``spec`` uses."""
    edits = _all_edits(spec)
    rdts = [e.intel_rdt for e in edits if e.intel_rdt is not None]
    if any(e.net_devices for e in edits) or any(r.schemata or r.enable_monitoring for r in rdts):
        return "1.1.0"
    if rdts or any(e.additional_gids for e in edits):
        return "0.7.0"
    if spec.annotations or any(d.annotations for d in spec.devices) or "." in spec.device_class:
        return "0.6.0"
    if any(d.name[:1].isdigit() for d in spec.devices) or any(
        n.host_path for e in edits for n in e.device_nodes
    ):
        return "0.5.0"
    if any(m.type for e in edits for m in e.mounts):
        return "0.4.0"
    return "0.3.0"


def _check_version(spec: Spec) -> None:
    needed = minimum_version(spec)
    if _vkey(needed) > _vkey(spec.version):
        raise SpecError(f"cdiVersion {spec.version}: the fields used need at least {needed}")
    if _vkey(spec.version) >= _vkey("1.1.0"):
        for e in _all_edits(spec):
            if e.intel_rdt and (e.intel_rdt.enable_cmt or e.intel_rdt.enable_mbm):
                raise SpecError(
                    f"intelRdt.enableCMT/enableMBM are not valid for cdiVersion {spec.version}"
                )


# ---------------------------------------------------------------------------
# Writing


def _edits_dict(e: ContainerEdits) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if e.env:
        out["env"] = list(e.env)
    if e.device_nodes:
        nodes = []
        for n in e.device_nodes:
            optional = {
                "hostPath": n.host_path,
                "type": n.type,
                "major": n.major or None,
                "minor": n.minor or None,
                "fileMode": n.file_mode,
                "permissions": n.permissions,
                "uid": n.uid,
                "gid": n.gid,
            }
            node = {"path": n.path, **{k: v for k, v in optional.items() if v not in (None, "")}}
            nodes.append(node)
        out["deviceNodes"] = nodes
    if e.mounts:
        out["mounts"] = [
            {
                "hostPath": m.host_path,
                "containerPath": m.container_path,
                **({"options": list(m.options)} if m.options else {}),
                **({"type": m.type} if m.type else {}),
            }
            for m in e.mounts
        ]
    if e.hooks:
        out["hooks"] = [
            {
                "hookName": h.hook_name,
                "path": h.path,
                **({"args": list(h.args)} if h.args else {}),
                **({"env": list(h.env)} if h.env else {}),
                **({"timeout": h.timeout} if h.timeout is not None else {}),
            }
            for h in e.hooks
        ]
    if e.additional_gids:
        out["additionalGids"] = list(e.additional_gids)
    if e.net_devices:
        out["netDevices"] = [
            {"hostInterfaceName": n.host_interface_name, "name": n.name} for n in e.net_devices
        ]
    return out


def spec_to_dict(spec: Spec) -> dict[str, Any]:
    """The JSON form of ``spec`` (intelRdt is never written: the agent does not produce it)."""
    out: dict[str, Any] = {"cdiVersion": spec.version, "kind": spec.kind}
    if spec.annotations:
        out["annotations"] = dict(spec.annotations)
    out["devices"] = [
        {
            "name": d.name,
            **({"annotations": dict(d.annotations)} if d.annotations else {}),
            "containerEdits": _edits_dict(d.edits),
        }
        for d in spec.devices
    ]
    edits = _edits_dict(spec.edits)
    if edits:
        out["containerEdits"] = edits
    return out
