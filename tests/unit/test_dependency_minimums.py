"""pyproject.toml's minimums are what the generated ``agent/api`` code demands at import.

protobuf gencode calls ``ValidateProtobufRuntimeVersion(domain, major, minor, patch, …)``
and refuses an older runtime; grpc's ``*_pb2_grpc.py`` refuses a grpcio older than its
``GRPC_GENERATED_VERSION``. A minimum below either lets pip install a combination that
fails on the first import.
"""

from __future__ import annotations

import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]
API = ROOT / "agent" / "api"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _requirements() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    specs = {}
    for requirement in project["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement)
        assert name is not None
        specs[name.group().lower()] = requirement[name.end() :]
    return specs


def _bound(spec: str, operator: str) -> tuple[int, ...]:
    found = re.search(rf"{re.escape(operator)}\s*([0-9][0-9.]*)", spec)
    assert found is not None, f"'{spec}' has no {operator} bound"
    return _version(found.group(1))


def _protobuf_gencode() -> set[tuple[int, ...]]:
    pattern = re.compile(
        r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*"
        r"(\d+),\s*(\d+),\s*(\d+),"
    )
    found = set()
    for path in API.rglob("*_pb2.py"):
        for match in pattern.finditer(path.read_text()):
            found.add(tuple(int(g) for g in match.groups()))
    return found


def _grpc_gencode() -> set[tuple[int, ...]]:
    pattern = re.compile(r"GRPC_GENERATED_VERSION = '([0-9.]+)'")
    return {
        _version(match.group(1))
        for path in API.rglob("*_pb2_grpc.py")
        for match in pattern.finditer(path.read_text())
    }


def test_the_protobuf_minimum_is_the_gencode_version():
    gencode = _protobuf_gencode()
    assert gencode, "no generated protobuf modules found"
    needed = max(gencode)
    spec = _requirements()["protobuf"]
    assert _bound(spec, ">=") == needed, f"protobuf{spec}: the generated code needs {needed}"
    # The runtime refuses a gencode of a newer major, and warns for an older one.
    assert _bound(spec, "<") <= (needed[0] + 1,), f"protobuf{spec} allows another major"


def test_the_grpcio_minimum_is_the_generated_version():
    gencode = _grpc_gencode()
    assert gencode, "no generated gRPC modules found"
    needed = max(gencode)
    requirements = _requirements()
    for package in ("grpcio", "grpcio-reflection"):  # reflection ships in lockstep with grpcio
        assert _bound(requirements[package], ">=") >= needed, f"{package}: needs {needed}"


def test_the_license_is_an_spdx_expression():
    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    # PEP 639: a string; the table form is deprecated (setuptools warns on every build).
    assert project["license"] == "Apache-2.0"
