"""``model-agent ctl completion bash|zsh|fish``: the scripts, loaded into the real shells."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

CTL = [sys.executable, "-m", "agent", "ctl"]


def _script(shell: str) -> str:
    done = subprocess.run(
        [*CTL, "completion", shell], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


def _need(shell: str) -> str:
    path = shutil.which(shell)
    if path is None:
        pytest.skip(f"{shell} is not installed (scripts/setup installs it)")
    return path


def _bash(script: str, *words: str) -> list[str]:
    program = (
        f"{script}\nCOMP_WORDS=({' '.join(repr(w) for w in words)}); "
        f"COMP_CWORD={len(words) - 1}; "
        '_model_agent; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(
        [_need("bash"), "-c", program], capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout.split()


def test_bash_completes_commands_verbs_and_the_verbs_flags():
    script = _script("bash")
    assert _bash(script, "model-agent", "c") == ["config", "ctl"]
    assert _bash(script, "model-agent", "ctl", "ru") == ["runp", "run"]
    # a global flag's value is not taken for the verb
    flags = _bash(script, "model-agent", "ctl", "-o", "json", "rm", "-")
    assert {"-a", "--all", "-f", "--force", "-k", "--keep-logs"} <= set(flags)
    assert _bash(script, "model-agent", "ctl", "completion", "") == ["bash", "zsh", "fish"]
    assert "pull-image-on-create" in _bash(script, "model-agent", "ctl", "config", "p")
    assert "--runtime-endpoint" in _bash(script, "model-agent", "ctl", "--r")


def test_fish_completes_verbs_and_flags():
    fish = _need("fish")
    script = _script("fish")

    def complete(line: str) -> list[str]:
        done = subprocess.run(
            [fish, "--no-config", "-c", f"{script}\ncomplete -C {line!r}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return [row.split("\t")[0] for row in done.stdout.splitlines()]

    assert complete("model-agent ctl ru") == ["run", "runp"]
    assert {"--force", "--all", "--keep-logs"} <= set(complete("model-agent ctl rm --"))
    assert complete("model-agent ctl completion ") == ["bash", "fish", "zsh"]


def test_zsh_script_drives_compadd():
    """zsh's completion widgets need a terminal; the function runs with stand-ins for them."""
    zsh = _need("zsh")
    stand_ins = (
        "compdef() { :; }\n"
        'compadd() { [[ $1 == -- ]] && shift; print -l -- "$@"; }\n'
        '_describe() { local -a described; described=("${(@P)2}"); '
        'print -l -- "${described[@]%%:*}"; }\n'
        "_files() { print FILES; }\n"
    )
    script = _script("zsh")

    def complete(prefix: str, *words: str) -> list[str]:
        program = (
            f"{stand_ins}{script}\nwords=({' '.join(repr(w) for w in words)}); "
            f"CURRENT={len(words)}; "
            f"PREFIX={prefix!r}; _model_agent"
        )
        done = subprocess.run(
            [zsh, "-f", "-c", program], capture_output=True, text=True, timeout=30, check=True
        )
        return done.stdout.split()

    verbs = complete("ru", "model-agent", "ctl", "ru")
    assert {"run", "runp", "ps", "--socket"} <= set(verbs)
    flags = complete("-", "model-agent", "ctl", "--socket", "/x.sock", "rm", "-")
    assert {"--force", "--all"} <= set(flags) and "ps" not in flags
    assert complete("", "model-agent", "ctl", "runp", "") == ["FILES"]
    assert complete("", "model-agent", "ctl", "completion", "") == ["bash", "zsh", "fish"]
