"""The CRI's pod security options as the request converters take them (no root needed).

User namespaces (``NamespaceOption.userns_options``), id-mapped volumes
(``Mount.uidMappings``/``gidMappings``), recursive read-only mounts and the
supplemental groups policy: what is accepted becomes the domain values the pods
package acts on; what can never work is INVALID_ARGUMENT naming the field, before
anything is made.
"""

from __future__ import annotations

from typing import Any

import pytest

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.cri.convert.containers import container_config_from_pb
from agent.cri.convert.sandboxes import sandbox_config_from_pb
from agent.cri.convert.security import namespace_option_to_pb, userns_from_pb
from agent.errors import InvalidArgument
from agent.pods import model

HOST_BASE, SIZE = 1_000_000, 65536
FIELD = "config.linux.security_context.namespace_options.userns_options"


def mapping(host_id: int = HOST_BASE, container_id: int = 0, length: int = SIZE) -> pb.IDMapping:
    return pb.IDMapping(host_id=host_id, container_id=container_id, length=length)


def pod_userns(**changes: Any) -> pb.UserNamespace:
    fields: dict[str, Any] = {"mode": pb.POD, "uids": [mapping()], "gids": [mapping()]}
    return pb.UserNamespace(**{**fields, **changes})


def container(*mounts: pb.Mount, **security: Any) -> pb.ContainerConfig:
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="app"),
        image=pb.ImageSpec(image="busybox"),
        mounts=list(mounts),
        linux=pb.LinuxContainerConfig(
            security_context=pb.LinuxContainerSecurityContext(**security)
        ),
    )


# -- user namespaces -----------------------------------------------------------------------


def test_a_pod_user_namespace_keeps_the_kubelets_mappings():
    userns = userns_from_pb(pod_userns(), FIELD)
    assert userns == model.UserNamespace(
        (model.IdMapping(0, HOST_BASE, SIZE),), (model.IdMapping(0, HOST_BASE, SIZE),)
    )
    assert (userns.root_uid, userns.root_gid) == (HOST_BASE, HOST_BASE)


def test_node_mode_is_the_hosts_user_namespace():
    assert userns_from_pb(pb.UserNamespace(mode=pb.NODE), FIELD) is None


def test_a_sandbox_config_carries_its_user_namespace_and_round_trips():
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="p", uid="u", namespace="n"),
        linux=pb.LinuxPodSandboxConfig(
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(userns_options=pod_userns())
            )
        ),
    )
    namespaces = sandbox_config_from_pb(config, "runc").security.namespaces
    assert namespaces.userns is not None
    assert namespaces.userns.uids == (model.IdMapping(0, HOST_BASE, SIZE),)
    # PodSandboxStatus reports it back as it came.
    back = namespace_option_to_pb(namespaces).userns_options
    assert (back.mode, list(back.uids), list(back.gids)) == (pb.POD, [mapping()], [mapping()])


@pytest.mark.parametrize(
    ("userns", "fragment"),
    [
        (pod_userns(uids=[mapping(), mapping(HOST_BASE + SIZE, SIZE)]), "exactly one mapping"),
        (pod_userns(gids=[]), "gids: exactly one mapping is supported, got 0"),
        (pod_userns(uids=[mapping(container_id=1)]), "container id 0 is not mapped"),
        (pod_userns(uids=[mapping(length=0)]), "a mapping of 0 ids"),
        # A range must end below 2**32, as the kernel's uid_map takes it.
        (pod_userns(uids=[mapping(host_id=(1 << 32) - SIZE)]), "a mapping of 65536 ids"),
        (pod_userns(gids=[mapping(container_id=(1 << 32) - SIZE)]), "a mapping of 65536 ids"),
        (pb.UserNamespace(mode=pb.NODE, uids=[mapping()]), "mode NODE takes no mappings"),
        (pod_userns(mode=pb.CONTAINER), "CONTAINER user namespaces are not supported"),
        (pod_userns(mode=pb.TARGET), "TARGET user namespaces are not supported"),
        (pod_userns(mode=9), "mode: unknown value 9"),
    ],
)
def test_what_a_user_namespace_refuses(userns, fragment):
    with pytest.raises(InvalidArgument, match=fragment) as info:
        userns_from_pb(userns, FIELD)
    assert str(info.value).startswith(FIELD)


# -- id-mapped volumes (KEP-127) -----------------------------------------------------------


def test_an_id_mapped_volume_keeps_its_mappings():
    mount = pb.Mount(
        container_path="/data",
        host_path="/srv/data",
        uidMappings=[mapping()],
        gidMappings=[mapping()],
    )
    (converted,) = container_config_from_pb(container(mount)).mounts
    assert converted.uid_mappings == (model.IdMapping(0, HOST_BASE, SIZE),)
    assert converted.gid_mappings == (model.IdMapping(0, HOST_BASE, SIZE),)
    (plain,) = container_config_from_pb(
        container(pb.Mount(container_path="/d", host_path="/d"))
    ).mounts
    assert (plain.uid_mappings, plain.gid_mappings) == ((), ())


@pytest.mark.parametrize(
    ("mappings", "fragment"),
    [
        ({"uidMappings": [mapping()]}, "needs uid and gid mappings"),
        ({"gidMappings": [mapping()]}, "needs uid and gid mappings"),
        (
            {"uidMappings": [mapping(length=0)], "gidMappings": [mapping()]},
            r"config.mounts\[0\].uidMappings\[0\]: a mapping of 0 ids",
        ),
        (
            {"uidMappings": [mapping()], "gidMappings": [mapping(host_id=(1 << 32) - 1, length=1)]},
            r"config.mounts\[0\].gidMappings\[0\]",
        ),
    ],
)
def test_what_an_id_mapped_volume_refuses(mappings, fragment):
    mount = pb.Mount(container_path="/data", host_path="/srv/data", **mappings)
    with pytest.raises(InvalidArgument, match=fragment):
        container_config_from_pb(container(mount))


# -- recursive read-only mounts ------------------------------------------------------------


def test_a_recursive_read_only_mount_is_kept_as_such():
    mount = pb.Mount(
        container_path="/data", host_path="/srv/data", readonly=True, recursive_read_only=True
    )
    (converted,) = container_config_from_pb(container(mount)).mounts
    assert (converted.readonly, converted.recursive_read_only) == (True, True)
    assert converted.propagation == "PRIVATE"


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"readonly": False}, r"config.mounts\[0\]: recursive_read_only needs readonly"),
        (
            {"propagation": pb.PROPAGATION_HOST_TO_CONTAINER},
            "needs propagation PROPAGATION_PRIVATE",
        ),
        ({"propagation": pb.PROPAGATION_BIDIRECTIONAL}, "needs propagation PROPAGATION_PRIVATE"),
    ],
)
def test_what_a_recursive_read_only_mount_refuses(fields, fragment):
    mount = pb.Mount(
        **{"container_path": "/data", "host_path": "/srv/data", "readonly": True, **fields},
        recursive_read_only=True,
    )
    with pytest.raises(InvalidArgument, match=fragment):
        container_config_from_pb(container(mount))


# -- supplemental groups policy ------------------------------------------------------------


@pytest.mark.parametrize(("policy", "name"), [(pb.Merge, "Merge"), (pb.Strict, "Strict")])
def test_the_supplemental_groups_policy_is_taken_by_name(policy, name):
    config = container(supplemental_groups=[1234], supplemental_groups_policy=policy)
    security = container_config_from_pb(config).security
    assert (security.supplemental_groups_policy, security.supplemental_groups) == (name, (1234,))


def test_merge_is_the_default_supplemental_groups_policy():
    assert container_config_from_pb(container()).security.supplemental_groups_policy == "Merge"


def test_an_unknown_supplemental_groups_policy_is_refused():
    with pytest.raises(InvalidArgument, match="supplemental_groups_policy: unknown value 7"):
        container_config_from_pb(container(supplemental_groups_policy=7))
