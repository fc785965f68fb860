"""Choosing the CNI network: libcni's file rules and why a file was skipped."""

from __future__ import annotations

import json
import os
import stat

from agent.network.cni_config import find_network


def plugin(bin_dir, name):
    path = bin_dir / name
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def conflist(name, *types):
    return {"cniVersion": "1.0.0", "name": name, "plugins": [{"type": t} for t in types]}


def setup_dirs(tmp_path):
    conf, bins = tmp_path / "net.d", tmp_path / "bin"
    conf.mkdir()
    bins.mkdir()
    for name in ("bridge", "loopback", "portmap"):
        plugin(bins, name)
    return conf, bins


def test_no_directory_means_no_network(tmp_path):
    lookup = find_network([str(tmp_path / "missing")], [str(tmp_path)])
    assert lookup.network is None
    assert "no CNI network config found" in lookup.explain([str(tmp_path / "missing")])


def test_first_valid_file_by_name_wins(tmp_path):
    conf, bins = setup_dirs(tmp_path)
    (conf / "20-b.conflist").write_text(json.dumps(conflist("b", "bridge")))
    (conf / "10-a.conflist").write_text(json.dumps(conflist("a", "bridge", "portmap")))
    (conf / "05-ignored.txt").write_text("not a config")
    lookup = find_network([str(conf)], [str(bins)])
    assert lookup.network is not None
    assert lookup.network.name == "a"
    assert lookup.network.plugin_types == ["bridge", "portmap"]


def test_single_plugin_conf_is_wrapped(tmp_path):
    conf, bins = setup_dirs(tmp_path)
    (conf / "10-one.conf").write_text(
        json.dumps({"cniVersion": "0.4.0", "name": "one", "type": "bridge", "bridge": "cni0"})
    )
    network = find_network([str(conf)], [str(bins)]).network
    assert network is not None
    assert network.conflist["plugins"] == [{"type": "bridge", "bridge": "cni0"}]
    assert network.cni_version == "0.4.0"


def test_invalid_files_are_skipped_with_reasons(tmp_path):
    conf, bins = setup_dirs(tmp_path)
    (conf / "01-garbage.conflist").write_text("{not json")
    (conf / "02-noname.conflist").write_text(json.dumps({"plugins": [{"type": "bridge"}]}))
    (conf / "03-missing.conflist").write_text(json.dumps(conflist("x", "flannel")))
    (conf / "04-escape.conflist").write_text(json.dumps(conflist("y", "../../bin/sh")))
    (conf / "05-empty.conflist").write_text(json.dumps({"name": "z", "plugins": []}))
    lookup = find_network([str(conf)], [str(bins)])
    assert lookup.network is None
    text = lookup.explain([str(conf)])
    assert "01-garbage.conflist: not valid JSON" in text
    assert "02-noname.conflist: no network name" in text
    assert "plugin 'flannel' not found" in text
    assert "plugin '../../bin/sh' not found" in text
    assert "05-empty.conflist: no plugins" in text


def test_earlier_directory_wins(tmp_path):
    conf, bins = setup_dirs(tmp_path)
    own = tmp_path / "own"
    own.mkdir()
    (own / "00-own.conflist").write_text(json.dumps(conflist("own", "bridge")))
    (conf / "99-cluster.conflist").write_text(json.dumps(conflist("cluster", "bridge")))
    network = find_network([str(conf), str(own)], [str(bins)]).network
    assert network is not None and network.name == "cluster"
    os.remove(conf / "99-cluster.conflist")
    network = find_network([str(conf), str(own)], [str(bins)]).network
    assert network is not None and network.name == "own"
