"""``completion bash|zsh|fish``: shell completion for ``model-agent ctl``, from its parser.

crictl's scripts complete its verbs and global flags; these complete
``model-agent``'s commands, ctl's verbs and global flags, each verb's own flags
after the verb, and file names elsewhere (the config files ``runp``/``run``
take). Install with ``source <(model-agent ctl completion bash)``, the same for
zsh, or ``model-agent ctl completion fish | source``. Reads only argparse
parsers and ``config_file.KEYS``; no CRI.
"""

from __future__ import annotations

import argparse

from agent.ctl.config_file import KEYS
from agent.errors import InvalidArgument

__all__ = ["SHELLS", "VerbTable", "script"]

SHELLS = ("bash", "zsh", "fish")
COMMANDS = ("serve", "config", "version", "ctl")
#: verb name -> (help, parser), as ``verb.Verbs.table`` holds them.
VerbTable = dict[str, tuple[str, argparse.ArgumentParser]]


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [
        s
        for action in parser._actions
        for s in action.option_strings
        if action.help != argparse.SUPPRESS
    ]


def _long_options(parser: argparse.ArgumentParser) -> list[str]:
    return [s for s in _options(parser) if s.startswith("--")]


def _valued_options(parser: argparse.ArgumentParser) -> list[str]:
    return [
        s
        for action in parser._actions
        if action.option_strings and action.nargs != 0
        for s in action.option_strings
    ]


def _words(verb: str) -> tuple[str, ...]:
    """What a verb's positional arguments complete to, when not file names."""
    if verb == "completion":
        return SHELLS
    if verb == "config":
        return tuple(KEYS)
    return ()


def _bash(ctl: argparse.ArgumentParser, verbs: VerbTable) -> str:
    cases = []
    for name, (_, parser) in verbs.items():
        flags, words = " ".join(_options(parser)), " ".join(_words(name))
        cases.append(f'        {name}) flags="{flags}"; words="{words}" ;;')
    return f"""# bash completion for model-agent: source <(model-agent ctl completion bash)
_model_agent() {{
    local cur verb flags words i skip
    COMPREPLY=()
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    if [[ $COMP_CWORD -eq 1 ]]; then
        COMPREPLY=( $(compgen -W "{" ".join(COMMANDS)}" -- "$cur") )
        return 0
    fi
    [[ "${{COMP_WORDS[1]}}" == "ctl" ]] || {{ COMPREPLY=( $(compgen -f -- "$cur") ); return 0; }}
    verb=""
    skip=0
    for (( i=2; i<COMP_CWORD; i++ )); do
        if (( skip )); then skip=0; continue; fi
        case " {" ".join(_valued_options(ctl))} " in
            *" ${{COMP_WORDS[i]}} "*) skip=1; continue ;;
        esac
        case "${{COMP_WORDS[i]}}" in
            -*) ;;
            *) verb="${{COMP_WORDS[i]}}"; break ;;
        esac
    done
    if [[ -z "$verb" ]]; then
        COMPREPLY=( $(compgen -W "{" ".join(verbs)} {" ".join(_long_options(ctl))}" -- "$cur") )
        return 0
    fi
    case "$verb" in
{chr(10).join(cases)}
        *) flags=""; words="" ;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=( $(compgen -W "$flags" -- "$cur") )
    elif [[ -n "$words" ]]; then
        COMPREPLY=( $(compgen -W "$words" -- "$cur") )
    else
        COMPREPLY=( $(compgen -f -- "$cur") )
    fi
    return 0
}}
complete -F _model_agent model-agent
"""


def _zsh_quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("'", "'\\''")


def _zsh(ctl: argparse.ArgumentParser, verbs: VerbTable) -> str:
    described = " ".join(f"'{name}:{_zsh_quote(help)}'" for name, (help, _) in verbs.items())
    cases = []
    for name, (_, parser) in verbs.items():
        flags, words = " ".join(_options(parser)), " ".join(_words(name))
        cases.append(f"    {name}) flags=({flags}); args=({words}) ;;")
    return f"""#compdef model-agent
# zsh completion for model-agent; load with: source <(model-agent ctl completion zsh)

_model_agent() {{
  local -a verbs flags args valued
  local verb i skip
  if (( CURRENT == 2 )); then
    compadd -- {" ".join(COMMANDS)}
    return
  fi
  [[ ${{words[2]}} == ctl ]] || {{ _files; return }}
  verbs=({described})
  valued=({" ".join(_valued_options(ctl))})
  verb=""
  skip=0
  for (( i=3; i<CURRENT; i++ )); do
    if (( skip )); then skip=0; continue; fi
    if (( ${{valued[(Ie)${{words[i]}}]}} )); then skip=1; continue; fi
    if [[ ${{words[i]}} != -* ]]; then verb=${{words[i]}}; break; fi
  done
  if [[ -z $verb ]]; then
    _describe 'verb' verbs
    compadd -- {" ".join(_long_options(ctl))}
    return
  fi
  case $verb in
{chr(10).join(cases)}
    *) flags=(); args=() ;;
  esac
  if [[ $PREFIX == -* ]]; then
    compadd -- $flags
  elif (( ${{#args}} )); then
    compadd -- $args
  else
    _files
  fi
}}

compdef _model_agent model-agent
"""


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_option(flag: str) -> str:
    if flag.startswith("--"):
        return f"-l {flag[2:]}"
    return f"-s {flag[1:]}" if len(flag) == 2 else f"-o {flag[1:]}"


def _fish(ctl: argparse.ArgumentParser, verbs: VerbTable) -> str:
    names = " ".join(verbs)
    no_verb = f"__fish_seen_subcommand_from ctl; and not __fish_seen_subcommand_from {names}"
    lines = [
        "# fish completion for model-agent; load with: model-agent ctl completion fish | source",
        "complete -c model-agent -f",
        f"complete -c model-agent -n __fish_use_subcommand -a '{' '.join(COMMANDS)}'",
    ]
    for name, (help, _) in verbs.items():
        lines.append(f"complete -c model-agent -n '{no_verb}' -a {name} -d {_fish_quote(help)}")
    prefix = f"complete -c model-agent -n '{no_verb}'"
    lines += [f"{prefix} {_fish_option(flag)}" for flag in _long_options(ctl)]
    for name, (_, parser) in verbs.items():
        seen = f"__fish_seen_subcommand_from {name}"
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            flags = " ".join(_fish_option(s) for s in action.option_strings)
            description = f" -d {_fish_quote(action.help)}" if action.help else ""
            lines.append(f"complete -c model-agent -n '{seen}' {flags}{description}")
        if _words(name):
            lines.append(f"complete -c model-agent -n '{seen}' -a '{' '.join(_words(name))}'")
        else:
            lines.append(f"complete -c model-agent -n '{seen}' -F")
    return "\n".join(lines) + "\n"


def script(
    shell: str,
    ctl: argparse.ArgumentParser,
    verbs: VerbTable,
) -> str:
    """The completion script for ``shell``; ``verbs`` maps each verb to its help and parser."""
    makers = {"bash": _bash, "zsh": _zsh, "fish": _fish}
    if shell not in makers:
        raise InvalidArgument(f"only {', '.join(SHELLS)} are supported, not {shell!r}")
    return makers[shell](ctl, verbs)
