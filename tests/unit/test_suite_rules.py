"""Rules for the test suite itself: every test can fail.

A test that only calls things proves nothing when a helper stops checking.
Each test function must assert (``assert``, ``pytest.raises``, ``pytest.fail``,
``raise AssertionError``) or say why it does not run (``pytest.skip``).
"""

from __future__ import annotations

import ast
import pathlib

TESTS = pathlib.Path(__file__).resolve().parents[1]


def _checks_something(function: ast.AST) -> bool:
    for node in ast.walk(function):
        if isinstance(node, ast.Assert):
            return True
        if isinstance(node, ast.Raise) and "AssertionError" in ast.unparse(node.exc or node):
            return True
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name in ("pytest.raises", "pytest.fail", "pytest.skip", "pytest.xfail"):
                return True
            if name.rsplit(".", 1)[-1].startswith("assert_"):  # np.testing.assert_allclose
                return True
    return False


def unchecked_tests(root: pathlib.Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if node.name.startswith("test") and not _checks_something(node):
                found.append(f"{path.relative_to(root)}:{node.lineno} {node.name}")
    return found


def test_every_test_asserts_something():
    assert unchecked_tests(TESTS) == []


def test_the_rule_catches_a_test_that_asserts_nothing(tmp_path):
    (tmp_path / "test_x.py").write_text(
        "async def test_calls_only(client):\n"
        "    await client.StopContainer()\n"
        "def test_checks():\n"
        "    assert 1 + 1 == 2\n"
    )
    assert unchecked_tests(tmp_path) == ["test_x.py:1 test_calls_only"]
