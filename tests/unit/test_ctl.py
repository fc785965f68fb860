"""Pure parts of model-agent ctl: parsing, formatting, files, settings, the parser."""

from __future__ import annotations

import argparse
import io
import json
import time

import pytest
import yaml

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.ctl import commands
from agent.ctl.config_file import CtlConfig, endpoint_path, read_config, write_config
from agent.ctl.container_verbs import container_state, parse_bytes
from agent.ctl.image_verbs import progress_line, repo_tag_pairs
from agent.ctl.logs import LogFile, LogLine, LogPrinter, parse_log_line, previous_log_path
from agent.ctl.manifests import load_container_config, load_pod_config
from agent.ctl.output import (
    Table,
    human_duration,
    human_size,
    message_dict,
    status_document,
    write_yaml,
)
from agent.ctl.stats_verbs import container_stats_rows, cpu_percent, pod_stats_rows
from agent.ctl.stream_verbs import parse_port_mapping
from agent.ctl.timefmt import format_rfc3339nano, parse_duration_ns, parse_rfc3339, parse_since
from agent.ctl.verb import matches, parse_labels
from agent.errors import InvalidArgument, NotFound

S = 1_000_000_000


# -- logs ----------------------------------------------------------------------------


def test_cri_log_lines():
    assert parse_log_line(b"2016-10-06T00:17:09.669794202Z stdout P part one\n") == LogLine(
        "2016-10-06T00:17:09.669794202Z", "stdout", False, b"part one"
    )
    line = parse_log_line(b"2016-10-06T00:17:09.669794203+02:00 stderr F full line\n")
    assert line is not None and (line.stream, line.full, line.content) == (
        "stderr",
        True,
        b"full line",
    )
    assert parse_log_line(b"2016-10-06T00:17:09Z stdout F:x \n") == LogLine(
        "2016-10-06T00:17:09Z", "stdout", True, b""
    )
    assert parse_log_line(b"garbage\n") is None


def _printed(lines: list[bytes], **options) -> tuple[bytes, bytes]:
    out, err = io.BytesIO(), io.BytesIO()
    printer = LogPrinter(stdout=out, stderr=err, **options)
    for line in lines:
        printer.write(line)
    return out.getvalue(), err.getvalue()


LOG = [
    b"2024-01-02T03:04:05.100000000+00:00 stdout F first\n",
    b"2024-01-02T03:04:06.000000000+00:00 stderr F oops\n",
    b"2024-01-02T03:04:07.250000000+01:00 stdout P part-\n",  # 02:04:07.25 UTC: before since
    b"2024-01-02T03:04:08.000000000+00:00 stdout P two-\n",
    b"2024-01-02T03:04:08.500000000+00:00 stdout F three\n",
]


def test_log_printer_splits_streams_and_joins_partial_lines():
    assert _printed(LOG) == (b"first\npart-two-three\n", b"oops\n")


def test_log_printer_since_drops_older_lines():
    since = parse_rfc3339("2024-01-02T03:04:06Z")[0]
    assert _printed(LOG, since_ns=since) == (b"two-three\n", b"oops\n")


def test_log_printer_timestamps_only_at_line_starts_in_rfc3339nano():
    out, err = _printed(LOG, timestamps=True)
    assert out == (
        b"2024-01-02T03:04:05.1Z first\n"
        b"2024-01-02T03:04:07.25+01:00 part-two-three\n"  # one prefix for the whole line
    )
    assert err == b"2024-01-02T03:04:06Z oops\n"


def test_previous_log_path_is_the_attempt_before_next_to_the_current_one():
    assert previous_log_path("/var/log/pods/ns_p_u/app/3.log", 3, "app") == (
        "/var/log/pods/ns_p_u/app/2.log"
    )
    assert previous_log_path("/logs/app_1.log", 1, "app") == "/logs/0.log"  # as crictl does
    with pytest.raises(NotFound, match="previous terminated container app not found"):
        previous_log_path("/logs/app/0.log", 0, "app")


def test_log_file_follows_growth_partial_writes_and_rotation(tmp_path):
    path = tmp_path / "0.log"
    path.write_bytes(b"a\nb\nc\n")
    log = LogFile(str(path))
    try:
        assert log.lines(tail=2) == [b"b\n", b"c\n"]
        with open(path, "ab") as f:
            f.write(b"half")
        assert log.lines() == []  # an unfinished line waits for its newline
        with open(path, "ab") as f:
            f.write(b" done\n")
        assert log.lines() == [b"half done\n"]
        path.rename(tmp_path / "0.log.1")
        path.write_bytes(b"after rotation\n")
        assert log.lines() == [b"after rotation\n"]
    finally:
        log.close()


# -- time ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("0", 0),
        ("42m", 42 * 60 * S),
        ("1h30m", 90 * 60 * S),
        ("1.5s", 1_500_000_000),
        ("-2m", -120 * S),
        ("300ms", 300_000_000),
        ("1h2m3s4ms5us6ns", 3723 * S + 4_005_006),
    ],
)
def test_go_durations(text, ns):
    assert parse_duration_ns(text) == ns


@pytest.mark.parametrize("text", ["", "5", "m", "1x", "1h 2m", "--1s"])
def test_bad_go_durations(text):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration_ns(text)


def test_rfc3339_parsing_keeps_nanoseconds_and_offsets():
    assert parse_rfc3339("1970-01-01T00:00:01.000000002Z") == (S + 2, 0)
    assert parse_rfc3339("2024-01-02T03:04:05.5+02:00") == (
        parse_rfc3339("2024-01-02T01:04:05.5Z")[0],
        7200,
    )
    ns, offset = parse_rfc3339("2024-01-02T03:04")  # local time, seconds omitted
    assert offset is None
    assert ns == int(time.mktime((2024, 1, 2, 3, 4, 0, 0, 0, -1))) * S
    with pytest.raises(ValueError, match="not an RFC 3339 time"):
        parse_rfc3339("yesterday")


def test_since_takes_durations_times_and_unix_seconds():
    now = 1_700_000_000 * S
    assert parse_since("10m", now) == now - 600 * S
    assert parse_since("2023-11-14T22:13:20Z", now) == now
    assert parse_since("1700000000.5", now) == now + S // 2
    assert parse_since("0", now) == 0  # "0" is a Unix time, as in docker's GetTimestamp
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since("soon", now)


def test_rfc3339nano_formatting_matches_go():
    assert format_rfc3339nano(S + 2, 0) == "1970-01-01T00:00:01.000000002Z"
    assert format_rfc3339nano(1_500_000_000, 0) == "1970-01-01T00:00:01.5Z"
    assert format_rfc3339nano(0, -5 * 3600 - 1800) == "1969-12-31T18:30:00-05:30"
    assert format_rfc3339nano(3600 * S, 3600) == "1970-01-01T02:00:00+01:00"


# -- output --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "precision", "text"),
    [(0, 4, "0B"), (999, 4, "999B"), (1000, 4, "1kB"), (1_234_567, 4, "1.235MB")],
)
def test_go_units_sizes(size, precision, text):
    assert human_size(size, precision) == text


def test_go_units_sizes_with_precision_3():
    assert human_size(4_404_019, 3) == "4.4MB"
    assert human_size(123_456_789_012, 3) == "123GB"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.5, "Less than a second"),
        (1, "1 second"),
        (59, "59 seconds"),
        (60, "About a minute"),
        (59 * 60, "59 minutes"),
        (3600, "About an hour"),
        (47 * 3600, "47 hours"),
        (3 * 86400, "3 days"),
        (20 * 86400, "2 weeks"),
        (90 * 86400, "3 months"),
        (800 * 86400, "2 years"),
    ],
)
def test_go_units_durations(seconds, text):
    assert human_duration(seconds) == text


def test_table_pads_like_go_tabwriter():
    table = Table(["POD ID", "NAME"])
    table.add(["a" * 25, "x"])
    table.add(["b", "a-long-last-column"])
    assert table.render().splitlines() == [
        "POD ID" + " " * 22 + "NAME",
        "a" * 25 + "   x",
        "b" + " " * 27 + "a-long-last-column",
    ]
    short = Table(["A", "B"]).render()
    assert short == "A" + " " * 19 + "B\n"  # at least 20 wide


def test_json_is_protojson_shaped():
    doc = message_dict(
        pb.Container(id="c1", pod_sandbox_id="p1", created_at=5, state=pb.CONTAINER_EXITED)
    )
    assert doc["podSandboxId"] == "p1"
    assert doc["createdAt"] == "5"  # int64 as a string
    assert doc["state"] == "CONTAINER_EXITED"
    assert doc["labels"] == {} and doc["imageRef"] == ""  # zero values are printed
    assert "metadata" not in doc  # unset messages are not


def test_yaml_is_sorted_block_style():
    out = io.StringIO()
    write_yaml(pb.ListContainersResponse(containers=[pb.Container(id="c1")]), out)
    text = out.getvalue()
    assert text.startswith("containers:\n- annotations: {}\n")
    assert yaml.safe_load(text)["containers"][0]["id"] == "c1"
    keys = [line.split(":")[0].strip("- ") for line in text.splitlines()[1:] if ": " in line]
    assert keys == sorted(keys)


def test_status_document_parses_info_like_crictl():
    doc = status_document({"id": "x"}, {"info": '{"pid": 7}', "plain": '"quoted"'})
    assert doc == {"status": {"id": "x"}, "info": {"pid": 7}, "plain": "quoted"}


def test_repo_tag_pairs():
    image = pb.Image(repo_tags=["r.io/a/b:v1", "r.io/a/b:latest"], repo_digests=["r.io/a/b@sha"])
    assert repo_tag_pairs(image) == [("r.io/a/b", "v1"), ("r.io/a/b", "latest")]
    assert repo_tag_pairs(pb.Image(repo_digests=["r.io/a/b@sha256:00"])) == [("r.io/a/b", "<none>")]


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


def test_states_read_like_crictl():
    assert container_state(pb.CONTAINER_RUNNING) == "Running"
    assert container_state(pb.CONTAINER_EXITED) == "Exited"


# -- stats ---------------------------------------------------------------------------


def _cpu(ts: int, used: int) -> pb.CpuUsage:
    return pb.CpuUsage(timestamp=ts, usage_core_nano_seconds=pb.UInt64Value(value=used))


def test_cpu_percent_between_samples():
    assert cpu_percent(_cpu(0, 0), _cpu(S, S // 4)) == 25.0
    assert cpu_percent(_cpu(S, 10), _cpu(S, 20)) == 0.0  # no time passed


def test_stats_rows_skip_idle_and_new_entries():
    def c(cid: str, used: int, mem: int, ts: int) -> pb.ContainerStats:
        return pb.ContainerStats(
            attributes=pb.ContainerAttributes(id=cid, metadata=pb.ContainerMetadata(name=cid)),
            cpu=_cpu(ts, used),
            memory=pb.MemoryUsage(working_set_bytes=pb.UInt64Value(value=mem)),
        )

    before = [c("busy", 0, 1000, 0), c("idle", 0, 0, 0)]
    after = [c("busy", S // 2, 2_000_000, S), c("idle", 0, 0, S), c("new", 5, 5, S)]
    assert container_stats_rows(before, after, False) == [
        ["busy", "busy", "50.00", "2MB", "0B", "0", "0B"]
    ]
    assert [r[0] for r in container_stats_rows(before, after, True)] == ["busy", "idle"]

    def p(pid: str, used: int, ts: int) -> pb.PodSandboxStats:
        return pb.PodSandboxStats(
            attributes=pb.PodSandboxAttributes(id=pid, metadata=pb.PodSandboxMetadata(name="web")),
            linux=pb.LinuxPodSandboxStats(
                cpu=_cpu(ts, used),
                memory=pb.MemoryUsage(working_set_bytes=pb.UInt64Value(value=1500)),
            ),
        )

    assert pod_stats_rows([p("p" * 20, 0, 0)], [p("p" * 20, S, S)]) == [
        ["web", "p" * 13, "100.00", "1.5kB"]
    ]


# -- small parsers -------------------------------------------------------------------


def test_labels_bytes_ports_and_patterns():
    assert parse_labels(["a=1", "b="]) == {"a": "1", "b": ""}
    with pytest.raises(InvalidArgument, match="incorrectly specified label: a"):
        parse_labels(["a"])
    assert parse_bytes("67108864") == 64 << 20
    assert parse_bytes("64Mi") == parse_bytes("64m") == parse_bytes("64MB") == 64 << 20
    with pytest.raises(argparse.ArgumentTypeError):
        parse_bytes("lots")
    assert parse_port_mapping("8080") == (8080, 8080)
    assert parse_port_mapping(":80") == (0, 80)
    with pytest.raises(InvalidArgument):
        parse_port_mapping("99999")
    assert matches("^web", "web-1") and not matches("^web", "my-web")
    assert matches(None, "anything") and not matches("(", "(")


# -- files ---------------------------------------------------------------------------


def test_ctl_config_round_trip_keeps_comments(tmp_path):
    path = tmp_path / "ctl.yaml"
    path.write_text("# my node\ntimeout: 5   # slow disks\n")
    assert read_config(str(path)) == CtlConfig(timeout=5)
    write_config(str(path), CtlConfig(runtime_endpoint="unix:///run/x.sock", timeout=7, debug=True))
    text = path.read_text()
    assert text.splitlines()[:2] == ["# my node", "timeout: 7"]
    assert "runtime-endpoint: unix:///run/x.sock" in text
    assert read_config(str(path)) == CtlConfig(
        runtime_endpoint="unix:///run/x.sock", timeout=7, debug=True
    )
    assert read_config(str(tmp_path / "missing.yaml")) == CtlConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus: 1\n", "config option 'bogus' is not valid"),
        ("timeout: soon\n", "timeout: 'soon' is not a whole number"),
        ("debug: maybe\n", "debug: 'maybe' is not true or false"),
        ("- a\n", "expected key: value lines"),
    ],
)
def test_ctl_config_refuses_what_crictl_refuses(tmp_path, text, message):
    path = tmp_path / "ctl.yaml"
    path.write_text(text)
    with pytest.raises(InvalidArgument, match=message):
        read_config(str(path))


def test_endpoints():
    assert endpoint_path("unix:///run/a.sock") == "/run/a.sock"
    assert endpoint_path("/run/a.sock") == "/run/a.sock"
    with pytest.raises(InvalidArgument, match="only unix://"):
        endpoint_path("tcp://127.0.0.1:1")


def test_pod_and_container_configs_in_json_and_yaml(tmp_path, capsys):
    pod = tmp_path / "pod.json"
    pod.write_text(
        json.dumps(
            {
                "metadata": {"name": "web", "namespace": "default"},
                "log_directory": "/tmp/logs",
                "linux": {},
            }
        )
    )
    config = load_pod_config(str(pod))
    assert config.metadata.name == "web" and config.log_directory == "/tmp/logs"
    assert len(config.metadata.uid) == 36  # generated, as crictl does
    assert "cgroup_parent is not set" in capsys.readouterr().err
    container = tmp_path / "c.yaml"
    container.write_text(
        "metadata:\n  name: app\n  attempt: 1\nimage:\n  image: busybox\n"
        "command: [sleep, '60']\nlogPath: app/1.log\n"
    )
    c = load_container_config(str(container))
    assert (c.metadata.name, c.metadata.attempt, c.log_path) == ("app", 1, "app/1.log")
    assert list(c.command) == ["sleep", "60"]
    assert c.image.user_specified_image == "busybox"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"log_directory": "/x"}', "metadata is not set"),
        ('{"metadata": {"name": "x"}}', "name or namespace is not in metadata"),
        ('{"metadata": {"name": "x", "namespace": "y"}, "hostnme": "h"}', "hostnme"),
        ("[1, 2]", "not a JSON or YAML object"),
        ("key: [unclosed", "neither JSON nor YAML"),
    ],
)
def test_bad_pod_configs_are_refused(tmp_path, body, message):
    path = tmp_path / "pod.json"
    path.write_text(body)
    with pytest.raises(InvalidArgument, match=message):
        load_pod_config(str(path))
    with pytest.raises(InvalidArgument, match="not found"):
        load_pod_config(str(tmp_path / "none.json"))


# -- the parser and settings ---------------------------------------------------------


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    commands.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["ctl", *argv])


def test_output_flag_before_or_after_the_verb():
    assert _parse("ps", "-o", "yaml", "-q").output == "yaml"
    assert _parse("-o", "json", "ps").output == "json"
    assert _parse("-o", "json", "ps", "-o", "yaml").output == "yaml"  # the verb's wins
    assert _parse("ps").output is None  # each verb picks its own default


def test_crictl_flags_parse():
    args = _parse("rm", "-af")
    assert (args.all, args.force, args.ids) == (True, True, [])
    args = _parse("rmi", "-q")
    assert args.prune
    args = _parse("logs", "-p", "-t", "--since", "5m", "--tail", "3", "abc")
    assert (args.previous, args.timestamps, args.since, args.tail) == (True, True, "5m", 3)
    args = _parse("update", "--memory", "64Mi", "--cpu-quota", "50000", "c1", "c2")
    assert (args.memory, args.cpu_quota, args.ids) == (64 << 20, 50000, ["c1", "c2"])
    args = _parse("run", "-r", "crun", "--no-pull", "c.json", "p.json")
    assert (args.runtime, args.no_pull, args.container_config) == ("crun", True, "c.json")
    assert _parse("event").verb_fn is _parse("events").verb_fn
    assert _parse("-t", "2m", "ps").ctl_timeout == 120.0


def test_settings_precedence():
    file = CtlConfig(runtime_endpoint="unix:///from/file.sock", timeout=9, debug=True)
    args = _parse("ps")
    settings = commands.resolve_settings(args, "/agent.sock", file)
    assert (settings.runtime_socket, settings.image_socket) == ("/from/file.sock",) * 2
    assert (settings.timeout, settings.debug) == (9.0, True)
    args = _parse("--socket", "/flag.sock", "-t", "3", "-i", "unix:///img.sock", "ps")
    settings = commands.resolve_settings(args, "/flag.sock", file)
    assert (settings.runtime_socket, settings.image_socket) == ("/flag.sock", "/img.sock")
    assert settings.timeout == 3.0
    settings = commands.resolve_settings(_parse("ps"), "/agent.sock", CtlConfig())
    assert (settings.runtime_socket, settings.timeout) == ("/agent.sock", 30.0)
