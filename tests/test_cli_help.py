"""`cxr ... --help` is consistent: every option explained, defaults as `[default: ...]`, one capitalisation style,
`-o` on every command that writes an output."""
from __future__ import annotations

import re

import pytest
import typer

from cxrkit.cli import build_app


def _commands(group, path=("cxr",)):
    for name, cmd in sorted(group.commands.items()):
        if getattr(cmd, "commands", None):
            yield from _commands(cmd, path + (name,))
        else:
            yield " ".join(path + (name,)), cmd


COMMANDS = list(_commands(typer.main.get_command(build_app())))


def _options(cmd):
    return [p for p in cmd.params if p.param_type_name == "option" and "--help" not in p.opts and not p.hidden]


@pytest.mark.parametrize("path, cmd", COMMANDS, ids=[p for p, _ in COMMANDS])
def test_help_is_consistent(path, cmd):
    problems = []
    for p in [*cmd.params]:
        if p.param_type_name == "option" and ("--help" in p.opts or p.hidden):
            continue
        name = "/".join(p.opts) if p.param_type_name == "option" else p.name
        text = (p.help or "").strip()
        if not text:
            problems.append(f"{name}: no help text")
            continue
        if not (text[0].isupper() or text[0] in "`'\"" or text[:2].isdigit()):
            problems.append(f"{name}: help starts in lower case: {text[:30]!r}")
        if re.search(r"\((?:default:? )?[-\d.e']+\)\.?$", text) or "(default" in text:
            problems.append(f"{name}: default written in the help text instead of [default: ...]: {text!r}")
    if any("--out" in p.opts for p in _options(cmd)):
        out = next(p for p in _options(cmd) if "--out" in p.opts)
        if "-o" not in out.opts:
            problems.append("--out has no -o")
    assert not problems, f"{path}: " + "; ".join(problems)


def test_every_command_has_a_docstring():
    assert all((cmd.help or "").strip() for _, cmd in COMMANDS), [p for p, c in COMMANDS if not c.help]
