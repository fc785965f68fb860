"""The leak check counts what this run made and nothing else on the node."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from tests import leaks

OURS = "CNI-0123456789abcdef01234567"
THEIRS = "CNI-fedcba9876543210fedcba98"
MARKS = leaks.RunMarks(
    run_id="beef",
    paths=("/tmp/ma-beef-",),
    bridges={"ma-tbeef0001"},
    subnets={"10.252.7."},
)


def test_rules_of_the_run_and_their_chains_count_others_do_not():
    lines = [
        ("nat", f":{OURS} - "),
        ("nat", f":{THEIRS} - "),
        ("nat", f'-A POSTROUTING -s 10.252.7.2/32 -m comment --comment "id: x" -j {OURS}'),
        ("nat", f"-A {OURS} -d 10.252.7.0/24 -j ACCEPT"),
        ("nat", f"-A {OURS} ! -d 224.0.0.0/4 -j MASQUERADE"),
        # another agent's pod on 10.252.70.0/24 (a prefix match would take it)
        ("nat", f'-A POSTROUTING -s 10.252.70.2/32 -m comment --comment "id: y" -j {THEIRS}'),
        ("nat", f"-A {THEIRS} -d 10.252.70.0/24 -j ACCEPT"),
        ("filter", '-A FORWARD -m comment --comment "name: \\"net-beef12\\"" -j ACCEPT'),
    ]
    found = leaks.attribute_rules(lines, MARKS)
    assert found == {
        f"nat :{OURS} - ",
        f'nat -A POSTROUTING -s 10.252.7.2/32 -m comment --comment "id: x" -j {OURS}',
        f"nat -A {OURS} -d 10.252.7.0/24 -j ACCEPT",
        f"nat -A {OURS} ! -d 224.0.0.0/4 -j MASQUERADE",
        'filter -A FORWARD -m comment --comment "name: \\"net-beef12\\"" -j ACCEPT',
    }


def test_a_watched_process_counts_only_with_the_runs_paths(tmp_path):
    """Two processes named ``conmon``: one started with the run's paths, one without."""
    binary = tmp_path / "conmon"
    shutil.copy("/bin/sleep", binary)
    ours_dir = "/tmp/ma-beef-leaktest"
    os.makedirs(ours_dir, exist_ok=True)
    ours = subprocess.Popen([str(binary), "60"], cwd=ours_dir)
    theirs = subprocess.Popen([str(binary), "60"], cwd=str(tmp_path))
    try:
        time.sleep(0.1)
        found = leaks.snapshot(MARKS).processes
        assert f"{ours.pid} conmon" in found
        assert f"{theirs.pid} conmon" not in found
    finally:
        for proc in (ours, theirs):
            proc.kill()
            proc.wait()
        os.rmdir(ours_dir)
