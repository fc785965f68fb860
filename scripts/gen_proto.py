#!/usr/bin/env python3
"""Generate agent/api from proto/ (messages, gRPC stubs, and their type stubs).

    .venv/bin/python scripts/gen_proto.py            # rewrite agent/api
    .venv/bin/python scripts/gen_proto.py OUT_DIR    # write elsewhere (the staleness test)

protoc names a generated module after the .proto's path under proto/, so the
gRPC modules import ``cri.runtime.v1``; we rewrite those imports to live under
``agent.api`` and add the package ``__init__.py`` files.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile

from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO_DIR = os.path.join(ROOT, "proto")
PACKAGE = "agent.api"
PROTOS = [
    "cri/runtime/v1/api.proto",
    "kubelet/deviceplugin/v1beta1/api.proto",
    "kubelet/dra/v1/api.proto",
    "kubelet/dra/v1beta1/api.proto",
    "kubelet/dra_health/v1alpha1/api.proto",
    "kubelet/dra_health/v1beta1/api.proto",
    "kubelet/pluginregistration/v1/api.proto",
    "kubelet/podresources/v1/api.proto",
]
INIT_DOC = '"""Generated from proto/ by scripts/gen_proto.py; do not edit."""\n'
_IMPORT = re.compile(r"^from (cri|kubelet)\.", re.MULTILINE)


def generate(out_dir: str) -> None:
    bindir = os.path.dirname(sys.executable)
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_DIR}",
            f"-I{os.path.join(os.path.dirname(protoc.__file__), '_proto')}",
            f"--plugin=protoc-gen-mypy={os.path.join(bindir, 'protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={os.path.join(bindir, 'protoc-gen-mypy_grpc')}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out=quiet:{tmp}",
            f"--mypy_grpc_out=quiet:{tmp}",
            *(os.path.join(PROTO_DIR, p) for p in PROTOS),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        os.makedirs(out_dir)
        with open(os.path.join(out_dir, "__init__.py"), "w") as f:
            f.write(INIT_DOC)
        for dirpath, _, files in os.walk(tmp):
            rel = os.path.relpath(dirpath, tmp)
            target = os.path.join(out_dir, rel)
            os.makedirs(target, exist_ok=True)
            if rel != ".":
                with open(os.path.join(target, "__init__.py"), "w") as f:
                    f.write(INIT_DOC)
            for name in sorted(files):
                with open(os.path.join(dirpath, name)) as f:
                    text = f.read()
                text = _IMPORT.sub(f"from {PACKAGE}.\\1.", text)
                with open(os.path.join(target, name), "w") as f:
                    f.write(text)


if __name__ == "__main__":
    generate(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "agent", "api"))
