"""``resolve_in_root``: a path inside a root never resolves outside it, even through a
symlink whose target runs through a component that does not exist (yet)."""

from __future__ import annotations

import os

from agent._util.securejoin import resolve_in_root


def test_a_link_through_a_missing_component_stays_inside(tmp_path):
    root = tmp_path / "logs"
    root.mkdir()
    os.symlink("missing/../../out", root / "ns")
    resolved = resolve_in_root(str(root), "ns/app/0.log")
    assert resolved == str(root / "out" / "app" / "0.log")
    os.makedirs(os.path.dirname(resolved))
    assert not (tmp_path / "out").exists()


def test_dotdot_after_a_missing_component_is_clamped_at_the_root(tmp_path):
    resolved = resolve_in_root(str(tmp_path), "a/b/../../../../etc/passwd")
    assert resolved == str(tmp_path / "etc" / "passwd")


def test_a_missing_component_then_an_existing_link_is_resolved_inside(tmp_path):
    os.symlink("/", tmp_path / "up")
    resolved = resolve_in_root(str(tmp_path), "missing/../up/etc")
    assert resolved == str(tmp_path / "etc")


def test_existing_links_still_resolve_inside(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink("/real", tmp_path / "abs")
    os.symlink("../../real", tmp_path / "rel")
    assert resolve_in_root(str(tmp_path), "abs/f") == str(tmp_path / "real" / "f")
    assert resolve_in_root(str(tmp_path), "rel/f") == str(tmp_path / "real" / "f")
