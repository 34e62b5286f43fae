"""Distillation: `finetune --distill preds.csv` trains one model on the ensemble's probabilities; validation
stays the shared split, and what --pseudo-labels refuses is refused here too, by name."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from image_factory import COLOUR_CLASSES, write_good_images, write_labelled_folder
from quorum import files
from quorum.cli import main
from quorum.data.pseudo_labels import check_distill_csv, read_soft_targets
from quorum.errors import QuorumError
from quorum.train.finetune import finetune
from quorum.train.recipe import Recipe
from quorum.train.run import smoothed

pytestmark = pytest.mark.usefixtures("one_thread")


def recipe(data: Path, models: Path, name: str, **overrides) -> Recipe:
    settings = dict(backbone="tinyvgg", data=str(data), models_dir=str(models), image_size=32, epochs=2,
                    unfreeze_after=1, batch_size=8, workers=0, weights="none", lr=3e-3, finetune_lr=1e-3, name=name)
    return Recipe(**{**settings, **overrides})


def cli(*args):
    result = CliRunner().invoke(main, [*map(str, args)])
    assert "Traceback" not in result.output
    return result


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two tinyvgg teachers on three colour classes, and a `predict --probs` CSV over 12 unlabelled images."""
    root = tmp_path_factory.mktemp("distill")
    data = write_labelled_folder(root / "labelled")
    models = root / "models"
    for seed in range(2):
        finetune(recipe(data, models, f"t{seed}", seed=seed), quiet=True)
    for index, tint in enumerate(COLOUR_CLASSES.values()):
        write_good_images(root / "unlabelled" / f"c{index}", 4, tint=tint, seed=20 + index)
    preds = root / "preds.csv"
    # Every row is a soft target here; the unknown flag (which these 2-epoch teachers raise on some of
    # the unlabelled images) has tests of its own (test_unknown.py; left out and counted: below).
    result = cli("predict", root / "unlabelled", "--out", preds, "--models-dir", models, "--workers", 0, "-q",
                 "--probs",
                 "--no-unknown-flag")
    assert result.exit_code == 0, result.output
    return data, models, preds


@pytest.fixture
def run(teachers, tmp_path):
    """A copy of the teachers' models folder (the student fine-tunes into it, on the same split) and the CSV."""
    data, models, preds = teachers
    shutil.copytree(models, tmp_path / "models")
    return data, tmp_path / "models", preds


def test_labelled_targets_are_what_label_smoothing_trains_towards():
    logits = torch.randn(5, 4)
    labels = torch.tensor([0, 3, 1, 1, 2])
    targets = torch.from_numpy(np.stack([smoothed(int(label), 4, 0.1) for label in labels]))
    torch.testing.assert_close(torch.nn.functional.cross_entropy(logits, targets),
                               torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1))


def test_student_trains_on_every_readable_row_with_the_ensembles_probabilities(run, training_sets):
    data, models, preds = run
    frame = pd.read_csv(preds)
    seen = training_sets
    model_dir = finetune(recipe(data, models, "student", distill=str(preds)), quiet=True)
    classes = sorted(COLOUR_CLASSES)
    for path, row in zip(frame["path"], frame[[f"p_{c}" for c in classes]].to_numpy()):
        target = seen["train"][str(preds.parent / "unlabelled" / path)]
        np.testing.assert_allclose(target, row / row.sum(), atol=1e-6)  # the CSV's probabilities, as given
    labelled = [target for path, target in seen["train"].items() if not Path(path).is_absolute()]
    assert labelled and all(target.max() == pytest.approx(0.9 + 0.1 / 3) for target in labelled)
    assert not {str(preds.parent / "unlabelled" / p) for p in frame["path"]} & set(seen["val"])
    info = json.loads((model_dir / "model.json").read_text())["distill"]
    assert info["added"] == 12 and info["rows"] == 12 and info["teachers"] == ["t0", "t1"]
    assert info["file"] == str(preds) and info["digest"] == files.sha256(preds)[:16]  # the CSV it learnt from
    assert info["left_out"] == {"unreadable": 0, "unknown": 0, "gone": 0, "labelled": 0}
    # An ordinary bundle: predict runs it alone.
    result = cli("predict", preds.parent / "unlabelled", "--out", models.parent / "s.csv", "--models-dir", models,
                 "--model", "student", "--workers", 0, "-q")
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_report_shows_the_student_and_each_int8_graph_with_its_engine(run, tmp_path):
    """The comparison table and the accuracy-against-time picture: the student marked as one, and a row per int8
    graph (model.json's accuracies, the graph's own size and measured time)."""
    from quorum.report.build import build_report
    from quorum.report.html import figures, write_report

    data, models, preds = run
    finetune(recipe(data, models, "student", distill=str(preds)), quiet=True)
    assert cli("export", "--int8", "--models-dir", models).exit_code == 0
    report = build_report(models, quiet=True)
    write_report(report, tmp_path / "report")
    summary = pd.read_csv(tmp_path / "report" / "summary.csv").set_index("model")
    names = ["student", "t0", "t1"]
    assert list(summary.index) == [*names, *(f"{name} (int8)" for name in names), "ensemble"]
    for name in names:
        recorded = json.loads((models / name / "model.json").read_text())["int8"]
        row, kind = summary.loc[f"{name} (int8)"], "student" if name == "student" else "member"
        assert (row["engine"], row["kind"], summary.loc[name, "engine"], summary.loc[name, "kind"]) == (
            "int8", kind, "onnx", kind)
        assert row["accuracy"] == pytest.approx(recorded["val_accuracy_int8"])
        assert row["vs_float32"] == pytest.approx(recorded["val_accuracy_int8"] - recorded["val_accuracy_fp32"])
        assert row["size_mb"] == pytest.approx((models / name / "model.int8.onnx").stat().st_size / 1e6)
        assert row["ms_per_image"] > 0
    # The vote's cost is its members' alone.
    assert summary.loc["ensemble", "size_mb"] == pytest.approx(summary.loc[names, "size_mb"].sum())
    assert summary.loc["ensemble", "ms_per_image"] == pytest.approx(summary.loc[names, "ms_per_image"].sum())
    axes = figures(report)["accuracy_vs_time.png"].axes[0]
    labels = [text.get_text().split("\n") for text in axes.texts]
    assert [label[0] for label in labels] == list(summary.index)
    assert all(label[1].startswith("int8, ") for label in labels if label[0].endswith("(int8)"))
    assert [entry.get_text() for entry in axes.get_legend().get_texts()] == [
        "member", "member, int8", "student", "student, int8", "vote"]
    # On --data the int8 graphs run there too, beside (never in) the vote.
    on_data = build_report(models, data=data, timing=False, workers=0, quiet=True)
    table = on_data.table.set_index("model")
    assert on_data.ensemble["members"] == names and table.loc["t0 (int8)", "images"] == table.loc["t0", "images"]
    assert table.loc["t0 (int8)", "vs_float32"] == pytest.approx(
        table.loc["t0 (int8)", "accuracy"] - table.loc["t0", "accuracy"])


def test_rows_flagged_unknown_and_unreadable_are_left_out_and_counted(run, tmp_path):
    data, models, preds = run
    frame = pd.read_csv(preds, keep_default_na=False)
    frame["unknown"] = [index < 3 for index in range(len(frame))]
    edited = tmp_path / "flagged.csv"
    frame.to_csv(edited, index=False)
    shutil.copy(preds.with_name("preds.csv.json"), edited.with_name("flagged.csv.json"))
    model_dir = finetune(recipe(data, models, "student", epochs=1, distill=str(edited)), quiet=True)
    info = json.loads((model_dir / "model.json").read_text())["distill"]
    assert info["added"] == 9 and info["left_out"] == {"unreadable": 0, "unknown": 3, "gone": 0, "labelled": 0}


def test_a_csv_without_probabilities_is_one_error_line(run, tmp_path):
    data, models, _ = run
    plain = tmp_path / "plain.csv"
    result = cli("predict", Path(run[2]).parent / "unlabelled", "--out", plain, "--models-dir", models, "--workers", 0,
                 "-q")
    assert result.exit_code == 0, result.output
    result = cli("finetune", "tinyvgg", "--data", data, "--models-dir", models, "--image-size", 32, "--epochs", 1,
                 "--weights", "none", "--workers", 0, "--name", "x", "--distill", plain)
    assert result.exit_code == 1
    assert result.stderr == (f"Error: --distill {plain} has no p_<class> columns: write it with quorum predict FOLDER "
                             f"--out {plain} --probs\n")
    assert not (models / "x").exists() and not (models / ".x.partial").exists()


def test_a_changed_file_and_the_labelled_folder_are_refused_by_name(run, tmp_path):
    data, models, preds = run
    changed = pd.read_csv(preds)["path"].iloc[0]
    target = preds.parent / "unlabelled" / changed
    original, stat = target.read_bytes(), target.stat()
    try:
        target.write_bytes(original + b"\0")
        with pytest.raises(QuorumError, match=f"changed since {preds} was written \\({changed}\\)"):
            finetune(recipe(data, models, "student", distill=str(preds)), quiet=True)
    finally:  # the module's CSV vouches for the file again: the same bytes and times
        target.write_bytes(original)
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    on_labelled = tmp_path / "on_labelled.csv"
    result = cli("predict", data, "--out", on_labelled, "--models-dir", models, "--workers", 0, "-q", "--probs",
                 "--no-unknown-flag")  # every labelled file a row to distill from (none flagged and left out)
    assert result.exit_code == 0, result.output
    with pytest.raises(QuorumError, match=f"--distill {on_labelled} has 24 file\\(s\\) of the labelled folder {data}"):
        finetune(recipe(data, models, "student", distill=str(on_labelled)), quiet=True)


def test_distill_with_pseudo_labels_is_refused_before_torch_loads(tmp_path):
    result = cli("finetune", "tinyvgg", "--data", tmp_path, "--distill", tmp_path / "a.csv", "--pseudo-labels",
                 tmp_path / "b.csv")
    assert result.exit_code == 1
    assert result.stderr == "Error: --distill and --pseudo-labels both add the unlabelled images: give one of them\n"


def test_a_missing_distill_csv_says_to_write_it_with_probabilities(tmp_path):
    missing = tmp_path / "preds.csv"
    result = cli("finetune", "tinyvgg", "--data", tmp_path / "data", "--models-dir", tmp_path / "models",
                 "--distill", missing)
    assert result.exit_code == 1
    assert result.stderr == (f"Error: --distill {missing} does not exist: write one with quorum predict FOLDER "
                             f"--probs --out {missing}\n")



def test_teachers_named_like_a_probability_column_are_teachers_not_classes(run, tmp_path):
    """A model may be named `p_...`: its `p_..._prediction` and `_confidence` columns are a teacher's, not classes."""
    data, models, preds = run
    finetune(recipe(data, models, "p_t2", seed=2), quiet=True)
    csvs = {"probs": tmp_path / "probs.csv", "plain": tmp_path / "plain.csv"}
    for kind, csv in csvs.items():
        probs = ["--probs"] if kind == "probs" else []
        result = cli("predict", preds.parent / "unlabelled", "--out", csv, "--models-dir", models, "--model", "p_t2",
                     "--model", "t1", "--workers", 0, "-q", "--no-unknown-flag", *probs)
        assert result.exit_code == 0, result.output
    soft = read_soft_targets(csvs["probs"], tuple(sorted(COLOUR_CLASSES)))
    assert soft.teachers == ["p_t2", "t1"] and len(soft.items) == 12
    with pytest.raises(QuorumError, match="has no p_<class> columns"):
        check_distill_csv(csvs["plain"])


def test_probabilities_of_other_classes_are_refused_by_name(teachers, tmp_path):
    _, _, preds = teachers
    frame = pd.read_csv(preds, keep_default_na=False).rename(columns={"p_red": "p_purple"})
    other = tmp_path / "other.csv"
    frame.to_csv(other, index=False)
    shutil.copy(preds.with_name("preds.csv.json"), other.with_name("other.csv.json"))
    with pytest.raises(QuorumError, match=f"--distill {other} gives probabilities of other classes \\(blue, green, "
                                          "purple\\) than this model's \\(blue, green, red\\)"):
        read_soft_targets(other, tuple(sorted(COLOUR_CLASSES)))


@pytest.mark.parametrize("value", [-0.5, 7.0, "nan", "abc"])
def test_probabilities_that_are_not_probabilities_are_refused_by_row(teachers, tmp_path, value):
    """An edited p_ cell: a negative or > 1 target trained the student silently, NaN trained it into NaN (then
    'val_predictions.csv is broken'), text crashed with a traceback."""
    _, _, preds = teachers
    frame = files.read_csv(preds, keep_default_na=False)
    classes = tuple(column.removeprefix("p_") for column in frame.columns if column.startswith("p_"))
    first = frame["path"].iloc[0]
    frame[f"p_{classes[0]}"] = frame[f"p_{classes[0]}"].astype(object)
    frame.loc[0, f"p_{classes[0]}"] = value
    edited = tmp_path / "edited.csv"
    files.write_csv(edited, frame)
    shutil.copy(f"{preds}.json", f"{edited}.json")
    with pytest.raises(QuorumError, match=rf"--distill {edited} has 1 row\(s\) whose p_<class> are not probabilities "
                                          rf"\(from 0 to 1, summing to 1; e.g. {first}: p_{classes[0]} {value}, "):
        read_soft_targets(edited, classes)
