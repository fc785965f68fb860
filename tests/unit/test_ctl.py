"""Pure helpers of model-agent ctl: CRI log parsing and the pull progress line."""

from __future__ import annotations

from agent.ctl.commands import parse_log_line, progress_line


def test_cri_log_lines():
    assert parse_log_line(b"2016-10-06T00:17:09.669794202Z stdout P part one\n") == (
        "stdout",
        False,
        b"part one",
    )
    assert parse_log_line(b"2016-10-06T00:17:09.669794203+02:00 stderr F full line\n") == (
        "stderr",
        True,
        b"full line",
    )
    assert parse_log_line(b"2016-10-06T00:17:09Z stdout F:x \n") == ("stdout", True, b"")
    assert parse_log_line(b"garbage\n") is None


def test_progress_line():
    line = progress_line(
        {
            "image": "r/m:v1",
            "bytesTotal": 4_000_000_000,
            "bytesDone": 1_000_000_000,
            "layersDone": 1,
            "layersTotal": 4,
        },
        width=10,
    )
    assert line == "r/m:v1 [##........]  25%  1.00/4.00 GB  1/4 layers"
    assert "  0%" in progress_line({"image": "x"})
