"""Ingests: parts a resumed download trusts, and the unpack worker freeing what it read."""

from __future__ import annotations

import io
import os
import pathlib

from agent.images.content import ContentStore
from agent.images.unpack_process import read_blob

MIB = 1 << 20


def test_parts_an_unpack_freed_are_fetched_again_after_a_crash(tmp_path):
    store = ContentStore(str(tmp_path / "content"))
    digest = "sha256:" + "ab" * 32
    ingest = store.open_ingest(digest, 8 * MIB, MIB)
    for index in range(6):
        ingest.mark_done(index)
    with open(ingest.consumed_path, "w") as f:
        f.write(f"{4 * MIB}\n")  # the worker freed the first four parts, then the agent died
    resumed = store.open_ingest(digest, 8 * MIB, MIB)
    assert resumed.done_parts == {4, 5}
    assert not os.path.exists(resumed.consumed_path)


def test_reading_with_punch_step_frees_the_file_behind_the_reader(tmp_path):
    path = tmp_path / "data"
    data = os.urandom(6 * MIB)
    path.write_bytes(data)
    os.sync()
    record = str(tmp_path / "consumed")
    watermarks = io.BytesIO(b"%d\n" % len(data))
    read = b"".join(
        read_blob(str(path), len(data), watermarks, punch_step=MIB, consumed_path=record)
    )
    assert read == data  # the reader got every byte
    freed_up_to = int(pathlib.Path(record).read_text())
    assert freed_up_to >= 4 * MIB
    assert os.stat(path).st_size == len(data)  # holes, not a truncation
    assert os.stat(path).st_blocks * 512 <= len(data) - freed_up_to + MIB
    assert path.read_bytes()[: 4 * MIB] == bytes(4 * MIB)
