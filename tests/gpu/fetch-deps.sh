#!/usr/bin/env bash
# Fill tests/gpu/deps/ with what tests/gpu/run.sh needs on an offline GPU machine:
# wheels for its Python (default 3.12, x86_64) and the runc + busybox-static .debs.
# Run here, where PyPI and Debian are reachable; the directory is git-ignored and
# is carried along to the GPU machine (about 14 MiB).
set -euo pipefail
cd "$(dirname "$0")/../.."

PYVER=${PYVER:-3.12}
ARCH=${ARCH:-x86_64}
DEPS=tests/gpu/deps
PIP=${PIP:-.venv/bin/pip}
abi="cp${PYVER/./}"

rm -rf "$DEPS"
mkdir -p "$DEPS/wheels" "$DEPS/debs"
"$PIP" download --quiet --disable-pip-version-check --only-binary=:all: \
    --python-version "$PYVER" --implementation cp --abi "$abi" \
    --platform "manylinux2014_$ARCH" --platform "manylinux_2_17_$ARCH" --platform "manylinux_2_28_$ARCH" \
    -d "$DEPS/wheels" \
    'grpcio>=1.85,<2' 'protobuf>=6.31,<8' 'PyYAML>=6,<7' 'pytest>=8,<10' 'pytest-asyncio>=0.24,<2' 'pytest-timeout>=2.3,<3' \
    'prometheus-client>=0.21,<1'

debarch=$([[ $ARCH == x86_64 ]] && echo amd64 || echo arm64)
(cd "$DEPS/debs" && apt-get download -q "runc:$debarch" "busybox-static:$debarch" >/dev/null)
du -sh "$DEPS"
