"""The README's workflow runs as written in a clone: its commands parse and their folders exist."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from quorum.cli import main
from quorum.data.images import scan_images

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


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_takes_torch_from_the_index_url_given_and_is_unchanged_without(tmp_path):
    """CPU-only wheels: `make ... TORCH_INDEX_URL=URL` installs torch and torchvision from URL first."""
    url = "https://download.pytorch.org/whl/cpu"
    for name in ("Makefile", "pyproject.toml"):  # a folder without .venv: `make -n` lists every install step
        shutil.copy(ROOT / name, tmp_path)

    def steps(*args: str) -> list[str]:
        # A make of its own, not a sub-make of the `make test` that runs this suite (which would add
        # "Entering directory" lines and pass its own variables down).
        env = {key: value for key, value in os.environ.items() if key not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
        return subprocess.run(["make", "-n", ".venv/.installed", *args], cwd=tmp_path, capture_output=True, text=True,
                              check=True, env=env).stdout.splitlines()

    plain = steps()
    assert plain == ["python3 -m venv .venv", ".venv/bin/pip install --quiet --upgrade pip",
                     ".venv/bin/pip install --quiet -e '.[test,demo]'", "touch .venv/.installed"]
    assert steps(f"TORCH_INDEX_URL={url}") == [
        *plain[:2], f".venv/bin/pip install --quiet --index-url {url} torch torchvision", *plain[2:]]
    readme = (ROOT / "README.md").read_text()
    assert f"make demo TORCH_INDEX_URL={url}" in readme and f"--index-url {url}" in readme


def test_the_count_of_files_left_out_is_quoted_as_quorum_prints_it(tmp_path):
    # The README's example folder: 2 .txt files and 1 .json.
    for name in ("notes.txt", "todo.txt", "meta.json"):
        (tmp_path / name).write_text("not an image")
    printed = scan_images(tmp_path).summary()
    assert f"`{printed}`" in " ".join((ROOT / "README.md").read_text().split())  # lines wrap anywhere


def readme_commands() -> list[tuple[str, list[str]]]:
    """Every `quorum COMMAND --option ...` the README shows, in shell blocks and inline: (command, its options)."""
    readme = (ROOT / "README.md").read_text()
    lines = [line.split(" #")[0] for block in re.findall(r"```sh\n(.*?)```", readme, re.S)
             for line in block.replace("\\\n", " ").splitlines()]
    lines += [" ".join(span.split()) for span in re.findall(r"`(quorum [^`]+)`", readme)]
    commands = []
    for line in lines:
        found = re.search(r"(?:^|-m )quorum (\w+)(.*)", line)
        if found:
            options = [word.strip("[]").split("=")[0] for word in shlex.split(found.group(2))]
            commands.append((found.group(1), [word for word in options if word.startswith("--")]))
    return commands


def test_every_option_the_readme_shows_is_one_its_command_takes():
    commands = readme_commands()
    assert ("merge", ["--out"]) in commands and ("predict", ["--shard", "--out"]) in commands  # inline ones too
    for name, options in commands:
        assert name in main.commands, f"README: no command quorum {name}"
        known = {opt for param in main.commands[name].params for opt in param.opts}
        assert set(options) <= known, f"README: quorum {name} has no {sorted(set(options) - known)}"


@pytest.mark.parametrize("command, where", [("predict", "weights in OUT.json"),
                                            ("demo", "weights in OUT/predictions.csv.json"),
                                            ("report", "weights cross-fitted")])
def test_vote_help_says_where_each_command_keeps_the_weights(command, where):
    """--vote is shared; predict writes OUT.json, demo OUT/predictions.csv.json, report no .json at all."""
    text = "".join(CliRunner().invoke(main, [command, "--help"]).output.split())  # wrapped anywhere, even at a "-"
    assert where.replace(" ", "") in text and "tiesasbelow" not in text  # nothing below --vote says how ties go


def test_every_results_section_the_readme_cites_is_a_heading_there():
    readme = " ".join((ROOT / "README.md").read_text().split())
    cited = set(re.findall(r'RESULTS[^"]{0,40}?"([^"]+)"', readme))
    headings = [line for line in (ROOT / "benchmarks" / "RESULTS.md").read_text().splitlines() if line.startswith("#")]
    assert {"The kept epoch", "Vote rules", "Engines"} <= cited  # the pattern still finds the citations
    for section in cited:
        assert any(section in heading for heading in headings), f'README cites RESULTS.md "{section}": no such heading'
