"""Security settings shared by sandboxes and containers: namespaces, seccomp, AppArmor."""

from __future__ import annotations

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.cri.validate import absolute, enum_name
from agent.errors import InvalidArgument
from agent.pods import model

__all__ = ["apparmor_from_pb", "namespace_option_to_pb", "namespaces_from_pb", "seccomp_from_pb"]


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
    if message.HasField("userns_options"):
        userns = message.userns_options
        if userns.mode in (pb.CONTAINER, pb.TARGET) or (
            userns.mode == pb.POD and (userns.uids or userns.gids)
        ):
            raise InvalidArgument(f"{field}.userns_options: user namespaces are not supported")
    return model.NamespaceOptions(modes["network"], modes["pid"], modes["ipc"], message.target_id)


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


def apparmor_from_pb(sc: pb.LinuxContainerSecurityContext) -> str:
    """``runtime/default``, ``unconfined`` or ``localhost/<profile>`` (the legacy form)."""
    if not sc.HasField("apparmor"):
        return sc.apparmor_profile
    kind = enum_name(
        pb.SecurityProfile.ProfileType,
        sc.apparmor.profile_type,
        "config.linux.security_context.apparmor.profile_type",
    )
    if kind == "Localhost":
        return f"localhost/{sc.apparmor.localhost_ref}"
    return "runtime/default" if kind == "RuntimeDefault" else "unconfined"


def namespace_option_to_pb(options: model.NamespaceOptions) -> pb.NamespaceOption:
    return pb.NamespaceOption(
        network=pb.NamespaceMode.Value(options.network),
        pid=pb.NamespaceMode.Value(options.pid),
        ipc=pb.NamespaceMode.Value(options.ipc),
        target_id=options.target_id,
    )
