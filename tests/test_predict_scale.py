"""Predict at scale: shards and merge, resume after a real SIGKILL, and torchrun with 2 CPU processes (gloo).

Every variant must give the CSV a single uninterrupted process gives: the same rows, order and labels,
probabilities within 1e-5.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from image_factory import write_good_images, write_labelled_folder
from quorum import files
from quorum.cli import main
from quorum.data.predictions_csv import changed_files
from quorum.models.bundle import load_model
from quorum.predict.members import select_models
from quorum.predict.options import PredictOptions, Shard
from quorum.predict.pipeline import predict

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "unlabelled"
OPTIONS = ["--lazy", "--probs", "--min-agreement", "0.9"]  # every optional column, and skipped members
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on a busy 2-core machine: no thread fights


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """10 files in two folders, one unreadable: shards of 3 split the sub-folder and the broken file."""
    root = tmp_path_factory.mktemp("images")
    write_good_images(root, 6, size=(48, 40))
    write_good_images(root / "sub", 3, seed=1)
    (root / "sub" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def cli(*args) -> object:
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    assert "Traceback" not in result.output, result.output
    return result


def predict_cli(folder, models, out, *args) -> object:
    result = cli("predict", folder, "--models-dir", models, "--out", out, "--workers", 0, "--batch-size", 3, *args)
    assert result.exit_code == 0, result.output
    return result


def assert_same_csv(path: Path, expected: Path) -> None:
    """Rows, order, labels and columns exactly; numbers within 1e-5."""
    got, want = pd.read_csv(path, keep_default_na=False), pd.read_csv(expected, keep_default_na=False)
    assert got.columns.tolist() == want.columns.tolist() and got["path"].tolist() == want["path"].tolist()
    numeric = [c for c in want.columns if c.endswith("_confidence") or c.startswith("p_")
               or c in ("agreement", "confidence", "consensus_kl")]
    pd.testing.assert_frame_equal(got.drop(columns=numeric), want.drop(columns=numeric))
    np.testing.assert_allclose(got[numeric].replace("", np.nan).to_numpy(float),
                               want[numeric].replace("", np.nan).to_numpy(float), atol=1e-5)


@pytest.fixture(scope="module")
def whole(folder, tiny_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "preds.csv"
    predict_cli(folder, tiny_models, out, *OPTIONS)
    return out


@pytest.fixture(scope="module")
def parts(folder, tiny_models, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("parts")
    for index in range(3):
        predict_cli(folder, tiny_models, root / f"part-{index}.csv", *OPTIONS, "--shard", f"{index}/3")
    return [root / f"part-{index}.csv" for index in range(3)]


# --- shards and merge ------------------------------------------------------------------------


def test_a_shard_is_every_nth_file_and_merged_shards_equal_the_whole(parts, whole, tmp_path):
    everything = pd.read_csv(whole)["path"].tolist()
    assert pd.read_csv(parts[1])["path"].tolist() == everything[1::3]
    sidecar = json.loads(Path(f"{parts[1]}.json").read_text())
    assert sidecar["run"]["shard"] == "1/3" and sidecar["rows"] == 3 and sidecar["run"]["files"] == 10
    out = tmp_path / "merged.csv"
    result = cli("merge", parts[2], parts[0], parts[1], "--out", out)  # any order
    assert result.exit_code == 0, result.output
    assert_same_csv(out, whole)
    assert pd.read_csv(out).columns.tolist() == pd.read_csv(whole).columns.tolist()  # no shard columns


def test_a_shard_run_by_the_library_holds_its_rows_in_the_folders_order(folder, tiny_models):
    frame = predict(folder, select_models(tiny_models), PredictOptions(workers=0, shard=Shard(2, 3)), quiet=True)
    assert frame["path"].tolist() == sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.*"))[2::3]


@pytest.mark.parametrize(("shard", "shown"), [("3/3", "3/3"), ("1-4", "1-4"), ("-1/2", "-1/2"), ("1/0", "1/0")])
def test_a_bad_shard_is_one_error_line(folder, tiny_models, tmp_path, shard, shown):
    result = cli("predict", folder, "--models-dir", tiny_models, "--out", tmp_path / "p.csv", "--shard", shard)
    assert result.exit_code == 1 and list(tmp_path.iterdir()) == []
    assert result.output == (f"Error: --shard takes I/N with I from 0 to N-1, e.g. 0/4 ... 3/4 "
                             f"(like SLURM_ARRAY_TASK_ID with --array=0-3); got '{shown}'\n")


def merge_error(*parts) -> str:
    result = cli("merge", *parts, "--out", Path(parts[0]).with_name("merged.csv"))
    assert result.exit_code == 1 and not Path(parts[0]).with_name("merged.csv").exists()
    return result.output


def test_merge_names_a_missing_or_repeated_shard(parts, folder, tmp_path):
    assert merge_error(parts[0], parts[2]) == (f"Error: missing shard 1 of 3 (have 0, 2): run `quorum predict "
                                               f"{folder.resolve()} --shard 1/3` and merge again\n")
    copy = tmp_path / "copy-of-1.csv"
    shutil.copy(parts[1], copy)
    shutil.copy(f"{parts[1]}.json", f"{copy}.json")
    assert merge_error(*parts, copy) == f"Error: shard 1/3 is given twice: {parts[1]} and {copy}\n"


def test_merge_refuses_parts_of_other_runs(parts, folder, tiny_models, tmp_path):
    other = tmp_path / "part-1.csv"  # other members
    predict_cli(folder, tiny_models, other, *OPTIONS, "--shard", "1/3", "--model", "tinyvgg-32")
    assert merge_error(parts[0], other, parts[2]) == (
        f"Error: {other} and {parts[0]} come from different runs: members mobilenet_v3_small-40, tinyvgg-32, "
        f"tinyvgg-32-copy in {parts[0]} but tinyvgg-32 in {other}\n")
    predict_cli(folder, tiny_models, other, "--shard", "1/3")  # other options
    assert "--lazy True in" in merge_error(parts[0], other, parts[2])
    predict_cli(folder, tiny_models, other, *OPTIONS, "--shard", "1/4")  # other N
    assert merge_error(parts[0], other) == (f"Error: {other} is shard 1/4 but {parts[0]} is shard 0/3: "
                                            "merge the parts of one run\n")


def test_merge_refuses_a_csv_that_is_not_a_part_or_was_edited(parts, whole, tmp_path):
    # A whole run's CSV has a .json too (for review and --pseudo-labels): it is shard 0/1 of its run.
    assert merge_error(parts[0], whole) == (f"Error: {whole} is shard 0/1 but {parts[0]} is shard 0/3: "
                                            "merge the parts of one run\n")
    bare = tmp_path / "preds.csv"
    shutil.copy(whole, bare)  # without its .json
    assert merge_error(parts[0], bare) == (f"Error: {bare} has no readable preds.csv.json beside it: only CSVs "
                                           "written by `quorum predict --shard I/N` can be merged\n")
    edited = tmp_path / "part-1.csv"
    shutil.copy(f"{parts[1]}.json", f"{edited}.json")
    pd.read_csv(parts[1]).iloc[:-1].to_csv(edited, index=False)  # a row lost
    assert merge_error(parts[0], edited, parts[2]) == (f"Error: {edited} is not the CSV its part-1.csv.json "
                                                       "describes (edited or replaced?): predict shard 1/3 again\n")


# --- resume ----------------------------------------------------------------------------------


def test_resume_keeps_finished_rows_ignores_a_torn_last_line_and_gives_the_whole_csv(folder, tiny_models, whole,
                                                                                      tmp_path):
    out = tmp_path / "preds.csv"
    progress = tmp_path / "preds.csv.partial"
    options = PredictOptions(workers=0, batch_size=3, lazy=True, probs=True, min_agreement=0.9)
    # the library keeps the progress: the CLI removes it
    predict(folder, select_models(tiny_models), options, quiet=True, progress=progress)
    rows = progress / "rows-0.jsonl"
    lines = rows.read_text().splitlines(keepends=True)
    assert len(lines) == 10 and all(json.loads(line)[0] in range(10) for line in lines)
    rows.write_text("".join(lines[:4]) + lines[4][:25])  # killed while writing the fifth row
    result = predict_cli(folder, tiny_models, out, *OPTIONS, "--resume")
    assert "4 rows were finished before" in result.output
    assert_same_csv(out, whole)
    assert not progress.exists()


def test_a_file_changed_before_resume_keeps_its_old_rows_fingerprint(tiny_models, tmp_path):
    """A row finished before --resume describes the file as it was then: the sidecar must say so, so that
    review and --pseudo-labels see the file changed since (and not vouch for the stale row)."""
    images = tmp_path / "images"
    write_good_images(images, 4, size=(48, 40))
    out, progress = tmp_path / "preds.csv", tmp_path / "preds.csv.partial"
    predict(images, select_models(tiny_models), PredictOptions(workers=0), quiet=True, progress=progress)
    rows = progress / "rows-0.jsonl"
    first = rows.read_text().splitlines(keepends=True)[0]
    rows.write_text(first)  # killed after the first row
    changed = images / sorted(p.name for p in images.iterdir())[json.loads(first)[0]]
    before = files.fingerprint(changed)
    write_good_images(tmp_path / "other", 1, size=(40, 48), seed=7)
    shutil.copyfile(next((tmp_path / "other").iterdir()), changed)  # replaced after its row was written
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    predict_cli(images, tiny_models, out, "--resume")
    sidecar = json.loads(Path(f"{out}.json").read_text())
    position = pd.read_csv(out)["path"].tolist().index(changed.name)
    assert sidecar["fingerprints"][position] == before != files.fingerprint(changed)
    assert changed_files(images, [changed.name], [sidecar["fingerprints"][position]]) == [changed.name]


def test_resume_refuses_nothing_to_resume_and_another_run(folder, tiny_models, tmp_path):
    out = tmp_path / "preds.csv"
    result = cli("predict", folder, "--models-dir", tiny_models, "--out", out, "--resume")
    assert result.exit_code == 1 and result.output == (
        f"Error: nothing to resume: {out}.partial does not exist (the run finished, or never started); "
        "run without --resume\n")
    progress = tmp_path / "preds.csv.partial"
    predict(folder, select_models(tiny_models), PredictOptions(workers=0), quiet=True, progress=progress)
    result = cli("predict", folder, "--models-dir", tiny_models, "--out", out, "--resume", "--probs")
    assert result.exit_code == 1 and result.output == (
        f"Error: cannot resume {progress}: it is from another run (--probs False then but True now); "
        "run without --resume to start over\n")
    assert progress.is_dir() and not out.exists()  # the finished rows are still there
    result = predict_cli(folder, tiny_models, out, "--probs")  # without --resume: started over
    assert "Starting over" in result.output and not progress.exists()
    assert len(pd.read_csv(out)) == 10


@pytest.mark.slow
def test_a_killed_predict_resumes_to_the_same_csv(tiny_models, tmp_path):
    whole, out = tmp_path / "whole.csv", tmp_path / "preds.csv"
    predict_cli(SAMPLE, tiny_models, whole, *OPTIONS)
    command = [sys.executable, "-m", "quorum", "predict", str(SAMPLE), "--models-dir", str(tiny_models),
               "--out", str(out), "--workers", "0", "--batch-size", "1", "--quiet", *OPTIONS]
    process = subprocess.Popen(command, env=ENV, stderr=subprocess.PIPE)
    rows = tmp_path / "preds.csv.partial" / "rows-0.jsonl"
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline and finished_rows(rows) < 5:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)  # a real signal: no handler, no cleanup, mid-run
    assert process.wait() == -signal.SIGKILL, process.stderr.read().decode()
    kept = finished_rows(rows)
    assert 5 <= kept < 100 and not out.exists()
    result = predict_cli(SAMPLE, tiny_models, out, *OPTIONS, "--resume")
    assert f"{kept} rows were finished before" in result.output
    assert_same_csv(out, whole)


def finished_rows(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


# --- torchrun: 2 CPU processes, gloo -----------------------------------------------------------


def torchrun(*args, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "quorum", *map(str, args)]
    result = subprocess.run(command, env=ENV, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_two_processes_predict_the_single_process_csv(tiny_models, tmp_path):
    single, shared = tmp_path / "single.csv", tmp_path / "shared.csv"
    predict_cli(SAMPLE, tiny_models, single, *OPTIONS)
    result = torchrun("predict", SAMPLE, "--models-dir", tiny_models, "--out", shared, "--workers", 0,
                      "--batch-size", 8, "--device", "cpu", *OPTIONS, cwd=tmp_path)
    assert "Voting on 1000 images in 2 processes" in result.stderr
    assert_same_csv(shared, single)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.csv", "shared.csv.json", "single.csv",
                                                          "single.csv.json"]  # progress removed


@pytest.mark.slow
def test_two_processes_finetune_one_model_validated_on_every_val_image(tmp_path):
    write_labelled_folder(tmp_path / "data", per_class=6)  # 3 val images: one process gets 2, the other 1
    torchrun("finetune", "tinyvgg", "--data", "data", "--image-size", 32, "--epochs", 2, "--unfreeze-after", 1,
             "--weights", "none", "--workers", 0, "--models-dir", "models", "--quiet", cwd=tmp_path)
    model_dir = tmp_path / "models" / "tinyvgg-32"
    assert sorted(p.name for p in model_dir.iterdir()) == ["features.npz", "history.csv", "model.json", "model.onnx",
                                                          "model.safetensors", "val_predictions.csv"]
    split = pd.read_csv(tmp_path / "models" / "split.csv")
    val = split.loc[split["subset"] == "val", "path"]
    info = json.loads((model_dir / "model.json").read_text())
    assert info["processes"] == 2 and info["metrics"]["images"] == len(val) == info["split"]["val_images"] == 3
    assert sorted(pd.read_csv(model_dir / "val_predictions.csv")["path"]) == sorted(val)
    assert len(pd.read_csv(model_dir / "history.csv")) == 2
    model, loaded = load_model(model_dir)
    assert loaded.classes == ("blue", "green", "red") and not model.training
