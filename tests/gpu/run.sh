#!/usr/bin/env bash
# The real-GPU checks of model-agent (issue 12), in under five minutes, on an NVIDIA GPU machine.
#
#   tests/gpu/run.sh        # from the repository (any cwd); one line per check, then a summary
#
# Written for the lent GPU machine: root inside gVisor or a Firecracker VM, offline, Python
# 3.12 with nvidia-ml-py, the driver under a read-only /usr/local/nvidia. It brings its own
# dependencies from tests/gpu/deps/ (wheels and .debs; tests/gpu/fetch-deps.sh fills it,
# ~14 MiB), probes what works there, never changes GPU state (no MIG mode change, no reset,
# no clocks), and reports every check as PASS, SKIP (with the reason) or FAIL. Exit status 1
# when a check failed. The report is also written to $OUT/gpu-report.txt when $OUT is set.
#
# Environment: PYTHON (default python3.12, else python3), MODEL_AGENT_GPU_DRIVER_ROOT
# (default /usr/local/nvidia when it holds libnvidia-ml, else /).
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
START=$SECONDS
WORK=$(mktemp -d /tmp/ma-gpu-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
REPORT=${OUT:-$WORK}/gpu-report.txt
: >"$REPORT"
FAILED=0

say() { printf '%s\n' "$*" | tee -a "$REPORT"; }
check() { # STATUS NAME [REASON]
    say "$(printf '%-4s  %-58s %s' "$1" "$2" "${3:-}")"
    [[ $1 == FAIL ]] && FAILED=1
    return 0
}

say "== model-agent GPU checks ($(date -u +%FT%TZ), $(uname -srm))"

# -- 1. Python and the packages the tests import ------------------------------------------
PY=${PYTHON:-$(command -v python3.12 || command -v python3 || true)}
if [[ -z $PY ]] || ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    check FAIL "python >= 3.11" "not found (set PYTHON)"
    exit 1
fi
check PASS "python" "$("$PY" -V 2>&1) at $PY"

SITE=$WORK/site
export PYTHONPATH=$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}
need='import grpc, google.protobuf, yaml, pytest, pytest_asyncio, pytest_timeout, prometheus_client'
if ! "$PY" -c "$need" 2>/dev/null; then
    wheels=$REPO/tests/gpu/deps/wheels
    if [[ -d $wheels ]]; then
        if ! "$PY" -m pip install --quiet --no-index --find-links "$wheels" --target "$SITE" \
            grpcio protobuf PyYAML pytest pytest-asyncio pytest-timeout prometheus-client 2>"$WORK/pip.err"; then
            # No pip: a wheel is a zip archive; unpacking it into a path entry installs it.
            "$PY" - "$wheels" "$SITE" <<'EOF'
import pathlib, sys, zipfile
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    zipfile.ZipFile(wheel).extractall(sys.argv[2])
EOF
        fi
    fi
fi
if "$PY" -c "$need" 2>"$WORK/import.err"; then
    check PASS "test dependencies" "grpcio, protobuf, PyYAML, pytest, prometheus_client"
else
    check FAIL "test dependencies" "$(tail -1 "$WORK/import.err") (run tests/gpu/fetch-deps.sh first)"
    exit 1
fi
if "$PY" -c 'import pynvml' 2>/dev/null; then
    check PASS "nvidia-ml-py" "$("$PY" -c 'import importlib.metadata as m; print(m.version("nvidia-ml-py"))' 2>/dev/null)"
else
    check FAIL "nvidia-ml-py" "the pynvml module is not importable"
fi

# -- 2. runc and busybox, from the host or the carried .debs -------------------------------
extract_deb() { # DEB DEST: dpkg-deb when there is one, else Python reads the ar archive
    if command -v dpkg-deb >/dev/null; then dpkg-deb -x "$1" "$2"; return; fi
    "$PY" - "$1" "$2" <<'EOF'
import io, sys, tarfile
data = open(sys.argv[1], "rb").read()
pos = 8  # "!<arch>\n"
while pos < len(data):
    name, size = data[pos:pos + 16].decode().strip(), int(data[pos + 48:pos + 58])
    body = data[pos + 60:pos + 60 + size]
    if name.startswith("data.tar"):
        archive = tarfile.open(fileobj=io.BytesIO(body))
        try:
            archive.extractall(sys.argv[2], filter="fully_trusted")  # a Debian package
        except TypeError:  # a Python without extraction filters
            archive.extractall(sys.argv[2])
    pos += 60 + size + (size & 1)
EOF
}
DEBROOT=$WORK/debroot
for deb in "$REPO"/tests/gpu/deps/debs/*.deb; do
    [[ -e $deb ]] && extract_deb "$deb" "$DEBROOT"
done
runc=$(command -v runc || true)
[[ -z $runc && -x $DEBROOT/usr/sbin/runc ]] && runc=$DEBROOT/usr/sbin/runc
busybox=$(command -v busybox || true)
[[ -z $busybox && -x $DEBROOT/bin/busybox ]] && busybox=$DEBROOT/bin/busybox
[[ -n $runc ]] && export MODEL_AGENT_GPU_RUNC=$runc
[[ -n $busybox ]] && export MODEL_AGENT_GPU_BUSYBOX=$busybox
check INFO "runc" "${runc:-none (containers will be skipped)}"
if unshare --mount --pid --fork true 2>/dev/null; then
    check INFO "namespaces" "unshare --mount --pid works"
else
    check INFO "namespaces" "unshare --mount --pid fails: containers will likely be skipped"
fi

# -- 3. the driver ------------------------------------------------------------------------
if [[ -z ${MODEL_AGENT_GPU_DRIVER_ROOT:-} ]]; then
    if compgen -G "/usr/local/nvidia/lib*/libnvidia-ml.so*" >/dev/null; then
        MODEL_AGENT_GPU_DRIVER_ROOT=/usr/local/nvidia
    else
        MODEL_AGENT_GPU_DRIVER_ROOT=/
    fi
fi
export MODEL_AGENT_GPU_DRIVER_ROOT
probe=$("$PY" - <<'EOF' 2>&1
import os
from agent.config import GpuSection
from agent.gpu.factory import open_backend
backend = open_backend(GpuSection(driver_root=os.environ["MODEL_AGENT_GPU_DRIVER_ROOT"],
                                  write_node_spec=False))
status = backend.status()
print(("ok " if status.available else "no ") + f"{status.gpu_count} GPU(s): {status.reason}")
EOF
)
if [[ $probe == ok* ]]; then
    check PASS "NVML (driver root $MODEL_AGENT_GPU_DRIVER_ROOT)" "${probe#ok }"
else
    check SKIP "NVML (driver root $MODEL_AGENT_GPU_DRIVER_ROOT)" "${probe#no }"
fi

# -- 4. the checks: real NVML, the node CDI spec, a runc container given one GPU -----------
# Watchdogs keep the whole script under five minutes: 150 s here, 90 s for DRA below.
"$PY" -m pytest tests/gpu -q -p no:cacheprovider --timeout 90 -o junit_family=xunit2 \
    --ignore=tests/gpu/test_dra_real.py \
    --junitxml="$WORK/junit.xml" >"$WORK/pytest.log" 2>&1 &
pytest_pid=$!
( sleep 150; kill -TERM "$pytest_pid" 2>/dev/null ) &
watchdog=$!
wait "$pytest_pid"
pytest_rc=$?
kill "$watchdog" 2>/dev/null
if [[ -s $WORK/junit.xml ]]; then
    while IFS=$'\t' read -r status name reason; do
        check "$status" "$name" "$reason"
    done < <("$PY" - "$WORK/junit.xml" <<'EOF'
import sys, xml.etree.ElementTree as ET
for case in ET.parse(sys.argv[1]).iter("testcase"):
    name = case.get("classname", "").rsplit(".", 1)[-1] + "::" + case.get("name", "")
    status, reason = "PASS", ""
    for tag, label in (("failure", "FAIL"), ("error", "FAIL"), ("skipped", "SKIP")):
        found = case.find(tag)
        if found is not None:
            status = label
            reason = (found.get("message") or "").splitlines()[0][:160] if found.get("message") else ""
            break
    print(f"{status}\t{name}\t{reason}")
EOF
    )
else
    check FAIL "pytest tests/gpu" "no results (exit $pytest_rc); see the log below"
fi
if [[ $pytest_rc -ne 0 && $pytest_rc -ne 5 ]]; then
    say "-- pytest output (exit $pytest_rc) --"
    tail -60 "$WORK/pytest.log" | tee -a "$REPORT"
    [[ $pytest_rc -ne 0 ]] && FAILED=1
fi

# -- 5. DRA (issue 13): a prepared claim -> its CDI spec -> a container -> nvidia-smi -L ----
# ClaimPreparer on the real inventory and driver: the claim's CDI spec is written from the
# node spec, the CDI id the kubelet would pass resolves to exactly the claimed GPU, and
# runc runs the mounted `nvidia-smi -L`, which must list that GPU and no other.
if timeout 90 "$PY" -m pytest tests/gpu/test_dra_real.py -q -p no:cacheprovider --timeout 80 -rs \
    >"$WORK/dra.log" 2>&1; then
    if grep -q "1 passed" "$WORK/dra.log"; then
        check PASS "DRA: prepared claim -> container -> nvidia-smi -L" ""
    else
        check SKIP "DRA: prepared claim -> container -> nvidia-smi -L" \
            "$(grep -m1 -o 'SKIPPED.*' "$WORK/dra.log" | cut -c1-160)"
    fi
else
    check FAIL "DRA: prepared claim -> container -> nvidia-smi -L" "$(tail -1 "$WORK/dra.log")"
    tail -40 "$WORK/dra.log" | tee -a "$REPORT"
fi

say "== done in $((SECONDS - START)) s: $([[ $FAILED == 0 ]] && echo 'no failures' || echo 'FAILURES')"
exit "$FAILED"
