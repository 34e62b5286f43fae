"""A mistake on the command line costs well under a second: options are checked before torch is imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import sys
from click.testing import CliRunner
from quorum.cli import main
result = CliRunner().invoke(main, sys.argv[1:])
print(result.exit_code, "torch" in sys.modules)
print(result.output, end="")
"""


def quorum_without_torch(*args: str) -> tuple[str, str]:
    """(exit code and whether torch was imported, the output) of `quorum ARGS` in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", CHECK, *args], capture_output=True, text=True, timeout=60)
    first, _, output = done.stdout.partition("\n")
    return first, output


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--epochs", "0", "--epochs must be at least 1 (got 0)"),
    ("--batch-size", "0", "--batch-size must be at least 1 (got 0)"),
    ("--val-fraction", "1.5", "--val-fraction must be between 0 and 1 (got 1.5)"),
    ("--image-size", "8", "--image-size must be at least 16 (got 8)"),
    ("--train-blocks", "-1", "--train-blocks must be 0 or more (got -1)"),
    ("--seed", "-3", "--seed must be 0 to 4294967295, numpy's range (got -3)"),  # the split's draw crashed
    ("--lr", "0", "--lr and --finetune-lr must be positive"),
    ("--name", "a/b", "--name 'a/b' must be a plain folder name (no '/', not starting with '.')"),
])
def test_a_bad_finetune_option_fails_before_torch_is_imported(option, value, message):
    status, output = quorum_without_torch("finetune", "tinyvgg", option, value)
    assert (status, output) == ("1 False", f"Error: {message}\n")


def test_bad_workers_fail_before_torch_is_imported():
    status, output = quorum_without_torch("finetune", "tinyvgg", "--workers", "-1")
    assert status == "2 False" and "'--workers': -1 is not in the range x>=0" in output


def test_a_missing_predict_folder_fails_before_torch_is_imported(tmp_path):
    status, output = quorum_without_torch("predict", str(tmp_path / "nowhere"), "--out", str(tmp_path / "p.csv"))
    assert (status, output) == ("1 False", f"Error: image folder not found: {tmp_path / 'nowhere'}\n")


@pytest.mark.parametrize("command", [["report", "--preds"], ["finetune", "tinyvgg", "--pseudo-labels"], ["review"]])
def test_a_missing_predictions_csv_fails_before_torch_is_imported(tmp_path, command):
    missing = tmp_path / "preds.csv"
    extra = ["--out", str(tmp_path / "review")] if command == ["review"] else ["--models-dir", str(tmp_path / "models")]
    status, output = quorum_without_torch(*command, str(missing), *extra)
    option = f"{command[-1]} " if command[-1].startswith("--") else ""
    assert (status, output) == ("1 False", f"Error: {option}{missing} does not exist: write one with quorum predict "
                                           f"FOLDER --out {missing}\n")
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize(("problem", "message"), [
    ("no data", "DATA {data} is not a folder: give the labelled folder (one sub-folder per class)"),
    ("no unlabelled", "--unlabelled {tmp}/nowhere is not a folder: give the folder of unlabelled images"),
    ("out exists", "--out {out} already exists: give a new folder (a check folder is written whole)"),
    ("out is a dangling link", "--out {out} already exists: give a new folder (a check folder is written whole)"),
    ("out inside data", "--out {data}/check is inside DATA {data}: "
                        "check never writes there; choose a folder outside it"),
    ("unlabelled inside data", "--unlabelled {data}/cat and DATA {data} overlap: every labelled image would be its "
                               "own unlabelled copy; give a folder of unlabelled images outside DATA"),
    ("data inside unlabelled", "--unlabelled {tmp} and DATA {data} overlap: every labelled image would be its "
                               "own unlabelled copy; give a folder of unlabelled images outside DATA"),
])
def test_a_bad_check_option_fails_before_torch_is_imported(tmp_path, problem, message):
    data, out = tmp_path / "data", tmp_path / "check"
    if problem != "no data":
        (data / "cat").mkdir(parents=True)
    if problem == "out exists":
        out.mkdir()
    if problem == "out is a dangling link":  # renaming the finished folder onto it would fail: say so now
        out.symlink_to(tmp_path / "gone")
    if problem == "out inside data":
        out = data / "check"
    unlabelled = {"no unlabelled": tmp_path / "nowhere", "unlabelled inside data": data / "cat",
                  "data inside unlabelled": tmp_path}.get(problem)
    extra = ["--unlabelled", str(unlabelled)] if unlabelled else []
    before = sorted(tmp_path.rglob("*"))
    status, output = quorum_without_torch("check", str(data), "--out", str(out), *extra)
    assert (status, output) == ("1 False", "Error: " + message.format(data=data, out=out, tmp=tmp_path) + "\n")
    assert sorted(tmp_path.rglob("*")) == before  # nothing written anywhere


@pytest.mark.parametrize("command", [["review", "p.csv", "--out", "r", "--budget", "3", "--rank", "random"],
                                     ["check", "data", "--out", "c"]])
def test_a_negative_seed_fails_before_torch_is_imported(command):
    """numpy's and scikit-learn's seeds are 0 to 2**32 - 1: -1 crashed review --rank random and check after
    the work, with a traceback."""
    status, output = quorum_without_torch(*command, "--seed", "-1")
    assert status == "2 False"
    assert output.endswith("Error: Invalid value for '--seed': -1 is not in the range 0<=x<=4294967295.\n")


@pytest.mark.parametrize("command", [["predict", ".", "--out", "{name}.csv"], ["check", "data", "--out", "{name}"],
                                     ["review", "p.csv", "--out", "{name}"]])
def test_an_out_name_too_long_for_the_file_system_is_one_error_line_before_any_work(tmp_path, command):
    """With quorum's suffixes (".NAME.json.<pid>.tmp", ".NAME.lock") the name passed 255 bytes: predict crashed
    with a traceback, check and review after all their work with 'cannot write in .'. (predict checks its --out
    once torch is in, before any model loads.)"""
    name = str(tmp_path / ("y" * 240))
    (tmp_path / "data" / "cat").mkdir(parents=True)
    command = [part.format(name=name) for part in command]
    out = command[-1]
    status, output = quorum_without_torch(*[str(tmp_path / part) if part in ("data", "p.csv") else part
                                            for part in command])
    assert (status[0], output) == ("1", f"Error: --out {out}: the name is {len(out.rsplit('/', 1)[1])} bytes, "
                                           "and quorum's files beside it need it to be at most 235: choose a shorter "
                                           "name\n")


def test_a_models_dir_inside_the_labelled_folder_fails_before_torch_is_imported(tmp_path):
    """Its folders were taken for classes: 'class folder DATA/models has no images: ... remove the folder'."""
    (tmp_path / "data" / "cat").mkdir(parents=True)
    data, models = tmp_path / "data", tmp_path / "data" / "models"
    status, output = quorum_without_torch("finetune", "tinyvgg", "--data", str(data), "--models-dir", str(models))
    assert (status, output) == ("1 False", f"Error: --models-dir {models} is inside --data {data}: its folders would "
                                           "be taken for classes; choose a models folder outside the labelled one\n")
    assert not models.exists()
