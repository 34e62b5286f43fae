"""The README's workflow runs as written in a clone: its commands parse and their folders exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click

from quorum.cli import main

ROOT = Path(__file__).resolve().parents[1]


def workflow_commands() -> list[list[str]]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## The workflow\n\n```sh\n(.*?)```", readme, re.S).group(1)
    return [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("quorum ")]


def test_the_workflow_parses_and_names_folders_a_clone_has(monkeypatch):
    monkeypatch.chdir(ROOT)  # as a user in a fresh clone
    commands = workflow_commands()
    assert [args[0] for args in commands] == ["finetune", "finetune", "finetune", "predict", "report"]
    for name, *args in commands:
        command = main.commands[name]
        with click.Context(main):
            context = command.make_context(name, list(args))  # unknown options and bad values raise here
        for key in ("folder", "data"):
            if context.params.get(key):
                assert (ROOT / context.params[key]).is_dir(), f"quorum {name}: no folder {context.params[key]}"
