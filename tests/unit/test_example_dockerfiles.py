"""The example Dockerfiles against modelbuild: same labels, env and config, real COPY sources.

No Docker engine runs here, so nothing else would notice a Dockerfile drifting from the
hermetic build (``modelbuild.examples``) it is documented to match. The Dockerfile is read
the way Docker reads the parts compared: continuation lines joined, comments dropped,
``ARG`` defaults and ``--build-arg`` values substituted (``$X``, ``${X}``, ``${X:-w}``,
``${X:+w}``), stages followed from the target back through ``FROM <stage>``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from modelbuild import examples as mb

CONTEXT = mb.HERE  # the build context of both Dockerfiles: examples/models
# The image config fields Docker sets from these instructions, as modelbuild names them.
CONFIG_FIELDS = ("User", "WorkingDir", "ExposedPorts", "StopSignal", "Entrypoint")
CUPY_PIN = "cupy-cuda12x==13.3.0 --hash=sha256:" + "0" * 64 + "\n"


@dataclass
class Stage:
    name: str
    parent: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse(path: str) -> dict[str, Stage]:
    """The stages by name (the last one also under ``""``), each with its instructions."""
    with open(path) as f:
        text = f.read()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in joined.splitlines():
        if not line.strip():
            continue
        keyword, _, rest = line.strip().partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            current = stages[name] = Stage(name, words[0])
            stages[""] = current
        else:
            assert current is not None, f"{path}: {keyword} before FROM"
            current.instructions.append((keyword, rest))
    return stages


def substitute(word: str, env: Mapping[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(4)
        value = env.get(name, "")
        if match.group(2) == "-":
            return value or match.group(3)
        if match.group(2) == "+":
            return match.group(3) if value else ""
        return value

    return re.sub(r"\$\{(\w+)(?::([+-])([^}]*))?\}|\$(\w+)", one, word)


def pairs(rest: str, env: Mapping[str, str]) -> dict[str, str]:
    """``KEY=value ...`` (quotes as the shell reads them), values substituted."""
    found = {}
    for word in shlex.split(rest):
        key, _, value = word.partition("=")
        found[key] = substitute(value, env)
    return found


def image(
    path: str, target: str = "", build_args: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The config Docker would give the ``target`` stage: labels, env and the rest."""
    stages = parse(path)
    chain: list[Stage] = []
    stage: Stage | None = stages[target]
    while stage is not None:
        chain.insert(0, stage)
        stage = stages.get(stage.parent)
    config: dict[str, Any] = {"Labels": {}, "Env": {}, "ExposedPorts": {}}
    for stage in chain:
        scope = dict(config["Env"])  # an ARG is seen only in the stage declaring it
        for keyword, rest in stage.instructions:
            if keyword == "ARG":
                key, has_default, default = rest.partition("=")
                given = (build_args or {}).get(key)
                if given is not None or has_default:
                    scope[key] = given if given is not None else substitute(default, scope)
            elif keyword == "ENV":
                config["Env"].update(pairs(rest, scope))
                scope.update(config["Env"])
            elif keyword == "LABEL":
                config["Labels"].update(pairs(rest, scope))
            elif keyword == "WORKDIR":
                config["WorkingDir"] = substitute(rest, scope)
            elif keyword == "USER":
                config["User"] = substitute(rest, scope)
            elif keyword == "EXPOSE":
                config["ExposedPorts"].update({f"{p}/tcp": {} for p in rest.split()})
            elif keyword == "STOPSIGNAL":
                config["StopSignal"] = rest
            elif keyword == "ENTRYPOINT":
                config["Entrypoint"] = json.loads(rest)
    return config


def hermetic(name: str, weights: mb.WeightsMode, version: str, extra: str | None) -> dict[str, Any]:
    """The config ``build_example`` writes, from the same functions it calls."""
    example = mb.EXAMPLES[name]
    labels = mb._labels(example, "1", weights, version, extra)
    return mb._runtime_config(example, labels)


def dockerfile(name: str) -> str:
    return os.path.join(CONTEXT, name, "Dockerfile")


# (example, Docker target, build args, modelbuild weights mode, weights version, CuPy lock?)
VARIANTS = [
    ("sklearn-iris", "", {}, "layer", "1", False),
    ("sklearn-iris", "", {"MODEL_VERSION": "2"}, "layer", "2", False),
    ("minilm-embedding", "", {}, "none", "1", False),
    ("minilm-embedding", "with-weights", {}, "layer", "1", False),
    ("minilm-embedding", "", {"WITH_CUPY": "1"}, "none", "1", True),
]


@pytest.mark.parametrize(
    ("name", "target", "build_args", "weights", "version", "cupy"),
    VARIANTS,
    ids=[f"{v[0]}:{v[1] or 'default'}:{v[2] or ''}" for v in VARIANTS],
)
def test_a_dockerfile_image_matches_the_hermetic_build(
    tmp_path, name, target, build_args, weights, version, cupy
) -> None:
    extra = None
    if cupy:
        extra = str(tmp_path / "cupy.lock")
        with open(extra, "w") as f:
            f.write(CUPY_PIN)
    docker = image(dockerfile(name), target, build_args)
    built = hermetic(name, weights, version, extra)
    built_labels = built["Labels"]
    # Docker leaves the OCI version/created/base.name to the tag and the builder.
    assert {k: built_labels[k] for k in docker["Labels"]} == docker["Labels"]
    ours = {k for k in built_labels if k.startswith("io.model-agent.")}
    assert ours <= set(docker["Labels"]), ours - set(docker["Labels"])
    built_env = dict(entry.split("=", 1) for entry in built["Env"])
    built_env.pop("PATH")  # Debian's own default in both
    assert docker["Env"] == built_env
    assert {k: docker.get(k) for k in CONFIG_FIELDS} == {k: built[k] for k in CONFIG_FIELDS}


@pytest.mark.parametrize("name", sorted(mb.EXAMPLES))
def test_dockerfile_packages_and_copy_sources_are_the_examples(name: str) -> None:
    example = mb.EXAMPLES[name]
    stages = parse(dockerfile(name))
    installs = [
        rest.split("--no-install-recommends", 1)[1].split("&&")[0].split()
        for keyword, rest in stages["deps"].instructions
        if keyword == "RUN" and "apt-get install" in rest
    ]
    assert sorted(installs[0]) == sorted(example.rootfs.packages)
    sources = [
        source
        for stage in stages.values()
        for keyword, rest in stage.instructions
        if keyword == "COPY" and not rest.startswith("--from=")
        for source in rest.split()[:-1]
    ]
    assert sources, "no COPY from the build context"
    missing = [s for s in sources if not os.path.exists(os.path.join(CONTEXT, s))]
    assert missing == []
    assert example.rootfs.wheels_lock is not None
    assert os.path.relpath(example.rootfs.wheels_lock, CONTEXT) in sources


def test_the_minilm_image_advertises_a_gpu_only_with_cupy(tmp_path) -> None:
    """The numpy image given a GPU computes on the CPU: it must not say gpu=optional."""
    minilm = mb.EXAMPLES["minilm-embedding"]
    assert mb.image_gpu(minilm) == "none"
    lock = tmp_path / "cupy.lock"
    lock.write_text(CUPY_PIN)
    assert mb.image_gpu(minilm, str(lock)) == "optional"
    assert mb.image_gpu(mb.EXAMPLES["sklearn-iris"], str(lock)) == "none"
    assert image(dockerfile("minilm-embedding"))["Labels"]["io.model-agent.model.gpu"] == "none"


def test_the_parser_sees_a_drifted_label(tmp_path) -> None:
    """Not a rubber stamp: a changed label in a copy of a Dockerfile shows up."""
    with open(dockerfile("sklearn-iris")) as f:
        text = f.read()
    drifted = tmp_path / "Dockerfile"
    drifted.write_text(text.replace("framework=scikit-learn", "framework=sklearn"))
    labels = image(str(drifted))["Labels"]
    assert labels["io.model-agent.model.framework"] == "sklearn"
    assert image(dockerfile("sklearn-iris"))["Labels"]["io.model-agent.model.version"] == "1"
