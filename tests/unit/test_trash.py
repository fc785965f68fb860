"""The trash: instant removal by rename, background deletion that counts down and resumes."""

from __future__ import annotations

import os

from agent.images.trash import Trash


def make_tree(path: str, files: int, size: int = 4096) -> None:
    os.makedirs(f"{path}/sub")
    for i in range(files):
        with open(f"{path}/sub/f{i}", "wb") as f:
            f.write(b"x" * size)


def test_put_is_a_rename_and_pending_counts_until_emptied(tmp_path):
    trash = Trash(str(tmp_path / ".trash"))
    make_tree(str(tmp_path / "layer"), 20)
    assert trash.put(str(tmp_path / "layer"), usage=(20 * 4096, 22))
    assert not (tmp_path / "layer").exists()
    assert trash.pending == (20 * 4096, 22)
    assert len(trash) == 1
    freed, entries = trash.empty()
    assert entries == 1 and freed >= 20 * 4096
    assert trash.pending == (0, 0)
    assert os.listdir(tmp_path / ".trash") == []
    assert trash.put(str(tmp_path / "missing")) is False


def test_entries_left_by_an_earlier_run_are_measured_then_deleted(tmp_path):
    make_tree(str(tmp_path / ".trash" / "left-over"), 10)
    trash = Trash(str(tmp_path / ".trash"))  # a restart: it finds what it did not finish
    assert len(trash) == 1
    assert trash.pending == (0, 0)  # not measured yet
    trash._measure("left-over")
    assert trash.pending[1] == 12  # the entry, sub/, 10 files
    trash.empty()
    assert os.listdir(tmp_path / ".trash") == []


def test_stop_leaves_the_rest_for_the_next_start(tmp_path):
    trash = Trash(str(tmp_path / ".trash"))
    for name in ("a", "b"):
        make_tree(str(tmp_path / name), 5)
        trash.put(str(tmp_path / name))
    trash.stop()
    trash.empty()
    assert sorted(n.split("-")[0] for n in os.listdir(tmp_path / ".trash")) == ["a", "b"]
    again = Trash(str(tmp_path / ".trash"))
    assert again.empty()[1] == 2
    assert os.listdir(tmp_path / ".trash") == []


def test_a_plain_file_goes_too(tmp_path):
    trash = Trash(str(tmp_path / ".trash"))
    (tmp_path / "blob").write_bytes(b"b" * 10000)
    trash.put(str(tmp_path / "blob"), usage=(12288, 1))
    assert trash.empty()[1] == 1
    assert os.listdir(tmp_path / ".trash") == []
