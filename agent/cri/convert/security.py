"""Security settings shared by sandboxes and containers: namespaces, seccomp, AppArmor."""

from __future__ import annotations

from collections.abc import Iterable

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.cri.validate import absolute, enum_name
from agent.errors import InvalidArgument
from agent.pods import model

__all__ = [
    "apparmor_from_pb",
    "id_mappings_from_pb",
    "namespace_option_to_pb",
    "namespaces_from_pb",
    "seccomp_from_pb",
    "userns_from_pb",
]


def namespaces_from_pb(message: pb.NamespaceOption, field: str) -> model.NamespaceOptions:
    modes = {}
    for name in ("network", "pid", "ipc"):
        modes[name] = enum_name(pb.NamespaceMode, getattr(message, name), f"{field}.{name}")
    if modes["network"] not in ("POD", "NODE"):
        raise InvalidArgument(f"{field}.network: {modes['network']} is not supported")
    if modes["ipc"] not in ("POD", "NODE"):
        raise InvalidArgument(f"{field}.ipc: {modes['ipc']} is not supported")
    if modes["pid"] == "TARGET" and not message.target_id:
        raise InvalidArgument(f"{field}.target_id is required with pid TARGET")
    userns = (
        userns_from_pb(message.userns_options, f"{field}.userns_options")
        if message.HasField("userns_options")
        else None
    )
    return model.NamespaceOptions(
        modes["network"], modes["pid"], modes["ipc"], message.target_id, userns
    )


def id_mappings_from_pb(
    mappings: Iterable[pb.IDMapping], field: str
) -> tuple[model.IdMapping, ...]:
    out = []
    for i, m in enumerate(mappings):
        # The kernel takes ranges that end below 2**32 (id 4294967295 is "no id").
        if m.length == 0 or m.host_id + m.length >= 1 << 32 or m.container_id + m.length >= 1 << 32:
            raise InvalidArgument(f"{field}[{i}]: a mapping of {m.length} ids from {m.host_id}")
        out.append(model.IdMapping(m.container_id, m.host_id, m.length))
    return tuple(out)


def userns_from_pb(message: pb.UserNamespace, field: str) -> model.UserNamespace | None:
    """``NODE``: the host's (None). ``POD``: one user namespace for the pod, from exactly
    one uid and one gid mapping that map container id 0 (the kubelet's). ``CONTAINER`` and
    ``TARGET`` are not supported (as in containerd and CRI-O)."""
    mode = enum_name(pb.NamespaceMode, message.mode, f"{field}.mode")
    if mode == "NODE":
        if message.uids or message.gids:
            raise InvalidArgument(f"{field}: mode NODE takes no mappings")
        return None
    if mode != "POD":
        raise InvalidArgument(f"{field}.mode: {mode} user namespaces are not supported")
    uids = id_mappings_from_pb(message.uids, f"{field}.uids")
    gids = id_mappings_from_pb(message.gids, f"{field}.gids")
    for name, maps in (("uids", uids), ("gids", gids)):
        if len(maps) != 1:
            raise InvalidArgument(
                f"{field}.{name}: exactly one mapping is supported, got {len(maps)}"
            )
        if maps[0].host(0) is None:
            raise InvalidArgument(f"{field}.{name}: container id 0 is not mapped")
    return model.UserNamespace(uids, gids)


def _profile(message: pb.SecurityProfile, field: str) -> model.SecurityProfile:
    kind = enum_name(pb.SecurityProfile.ProfileType, message.profile_type, f"{field}.profile_type")
    if kind == "Localhost":
        absolute(message.localhost_ref, f"{field}.localhost_ref")
    return model.SecurityProfile(kind, message.localhost_ref)


def seccomp_from_pb(
    message: pb.LinuxSandboxSecurityContext | pb.LinuxContainerSecurityContext, field: str
) -> model.SecurityProfile:
    """``seccomp`` wins; the deprecated ``seccomp_profile_path`` is read when it is absent."""
    if message.HasField("seccomp"):
        return _profile(message.seccomp, f"{field}.seccomp")
    legacy: str = message.seccomp_profile_path
    if legacy in ("runtime/default", "docker/default"):
        return model.SecurityProfile("RuntimeDefault")
    if legacy.startswith("localhost/"):
        return model.SecurityProfile(
            "Localhost",
            absolute(legacy.removeprefix("localhost"), f"{field}.seccomp_profile_path"),
        )
    return model.SecurityProfile("Unconfined")


def apparmor_from_pb(
    sc: pb.LinuxContainerSecurityContext | pb.LinuxSandboxSecurityContext,
    field: str = "config.linux.security_context",
) -> str:
    """``runtime/default``, ``unconfined`` or ``localhost/<profile>`` (the legacy form);
    "" when the request has none. A pod's context has only the ``apparmor`` field."""
    if not sc.HasField("apparmor"):
        return sc.apparmor_profile if isinstance(sc, pb.LinuxContainerSecurityContext) else ""
    kind = enum_name(
        pb.SecurityProfile.ProfileType, sc.apparmor.profile_type, f"{field}.apparmor.profile_type"
    )
    if kind == "Localhost":
        return f"localhost/{sc.apparmor.localhost_ref}"
    return "runtime/default" if kind == "RuntimeDefault" else "unconfined"


def namespace_option_to_pb(options: model.NamespaceOptions) -> pb.NamespaceOption:
    message = pb.NamespaceOption(
        network=pb.NamespaceMode.Value(options.network),
        pid=pb.NamespaceMode.Value(options.pid),
        ipc=pb.NamespaceMode.Value(options.ipc),
        target_id=options.target_id,
    )
    userns = options.userns
    if userns is None:
        message.userns_options.mode = pb.NODE
    else:
        message.userns_options.CopyFrom(
            pb.UserNamespace(
                mode=pb.POD,
                uids=[
                    pb.IDMapping(host_id=m.host_id, container_id=m.container_id, length=m.length)
                    for m in userns.uids
                ],
                gids=[
                    pb.IDMapping(host_id=m.host_id, container_id=m.container_id, length=m.length)
                    for m in userns.gids
                ],
            )
        )
    return message
