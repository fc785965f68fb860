"""crictl's pod-config and container-config files, read into CRI messages.

The files are the CRI ``PodSandboxConfig`` and ``ContainerConfig`` as JSON or
YAML, field names as the proto spells them (``log_directory``) or in
lowerCamelCase (``logDirectory``), the files crictl's ``runp``, ``create`` and
``run`` take. Checks are crictl's: ``metadata`` is required, a pod needs a name
and a namespace (a missing ``uid`` is generated), a container needs a name.
Unlike crictl, a field that is not in the CRI is an error rather than silently
dropped, so a typo cannot run a pod without the setting it meant. Imports the
CRI protobuf types, protobuf and PyYAML; makes no calls.
"""

from __future__ import annotations

import json
import sys
import uuid
from typing import Any

import yaml
from google.protobuf.json_format import ParseDict, ParseError

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.errors import InvalidArgument

__all__ = ["load_container_config", "load_pod_config"]


def _document(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise InvalidArgument(f"config at {path} not found") from None
    except OSError as exc:
        raise InvalidArgument(f"config at {path}: {exc.strerror}") from None
    try:
        document = json.loads(text)  # JSON first: tabs are fine in JSON, not in YAML
    except ValueError:
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InvalidArgument(f"config at {path} is neither JSON nor YAML: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidArgument(f"config at {path} is not a JSON or YAML object")
    return document


def _parse(path: str, message: Any) -> Any:
    try:
        ParseDict(_document(path), message)
    except ParseError as exc:
        raise InvalidArgument(f"config at {path}: {exc}") from None
    return message


def load_pod_config(path: str) -> pb.PodSandboxConfig:
    config: pb.PodSandboxConfig = _parse(path, pb.PodSandboxConfig())
    if not config.HasField("metadata"):
        raise InvalidArgument(f"config at {path}: metadata is not set")
    if not config.metadata.uid:
        config.metadata.uid = str(uuid.uuid4())
    if not config.metadata.name or not config.metadata.namespace:
        raise InvalidArgument(f"config at {path}: name or namespace is not in metadata")
    if config.HasField("linux") and not config.linux.cgroup_parent:
        print(
            f"warning: {path}: linux.cgroup_parent is not set; the pod's cgroup goes under "
            "the runtime's default parent",
            file=sys.stderr,
        )
    return config


def load_container_config(path: str) -> pb.ContainerConfig:
    config: pb.ContainerConfig = _parse(path, pb.ContainerConfig())
    if not config.HasField("metadata"):
        raise InvalidArgument(f"config at {path}: metadata is not set")
    if not config.metadata.name:
        raise InvalidArgument(f"config at {path}: name is not in metadata")
    if not config.image.user_specified_image:
        config.image.user_specified_image = config.image.image
    return config
