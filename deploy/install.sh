#!/bin/sh
# model-agent node install from an offline wheelhouse (README: "Node install").
#
#   ./install.sh [install options]        from a wheelhouse made by scripts/build-wheelhouse,
#                                         which puts this script next to the wheels
#
# Runs `python3 -m agent.install install` straight from the model-agent wheel (the install
# code needs only the standard library), so a fresh node needs python3 with venv, and no
# package index. Upgrades use the same command with the newer wheelhouse.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
wheelhouse=${MODEL_AGENT_WHEELHOUSE:-$here}
python=${PYTHON:-python3}
wheel=$(ls "$wheelhouse"/model_agent-*.whl 2>/dev/null | sort -V | tail -n 1)
if [ -z "$wheel" ]; then
    echo "install.sh: no model_agent-*.whl in $wheelhouse (build it with scripts/build-wheelhouse)" >&2
    exit 1
fi
if ! "$python" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "install.sh: $python must be Python >= 3.11 with venv (Debian: apt-get install python3-venv)" >&2
    exit 1
fi
PYTHONPATH="$wheel" exec "$python" -m agent.install install --wheelhouse "$wheelhouse" \
    --python "$python" "$@"
