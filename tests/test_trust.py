"""Trust, review and pseudo-labels: the trust table against a hand count, the CSV as pandas reads it,
`quorum review`'s folders, and pseudo-labelled rows that reach training but never validation."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from conftest import save_model
from image_factory import COLOUR_CLASSES, write_good_images, write_labelled_folder
from quorum.cli import main
from quorum.data.split import load_or_make_split
from quorum.errors import QuorumError
from quorum.predict.members import select_models
from quorum.predict.options import PredictOptions
from quorum.predict.pipeline import predict
from quorum.predict.table import DTYPES, read_predictions, write_predictions
from quorum.predict.trust_table import coverage_curve, trust_table
from quorum.predict.vote import vote
from quorum.train.finetune import finetune
from quorum.train.recipe import Recipe

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py
CAT, DOG, FOX = range(3)


def cli(*args):
    result = CliRunner().invoke(main, [*map(str, args)])
    assert "Traceback" not in result.output, result.output
    return result


def probs_for(votes: list[tuple[int, ...]], n_classes: int = 4) -> np.ndarray:
    """(members, images, classes): each member gives 0.7 to its vote and 0.1 to every other class."""
    probs = np.full((len(votes[0]), len(votes), n_classes), 0.1)
    for image, members in enumerate(votes):
        for member, label in enumerate(members):
            probs[member, image, label] = 0.7
    return probs


# --- the trust table --------------------------------------------------------------------------


def test_trust_table_matches_a_hand_count():
    votes = [(CAT, CAT, CAT), (CAT, CAT, CAT), (DOG, DOG, CAT), (DOG, DOG, CAT), (CAT, DOG, FOX), (FOX, FOX, FOX)]
    truth = np.array([CAT, DOG, DOG, CAT, CAT, FOX])
    # By hand: unanimous rows 1, 2, 6 (2 right); majority rows 3, 4 (1 right); the tie-breaker (member 0)
    # decides row 5 (right).
    table = trust_table(truth, vote(probs_for(votes), tie_breaker=0)).set_index(["group", "level"])
    expected = {
        ("agreement", "3 of 3"): (3, 2), ("agreement", "2 of 3"): (2, 1), ("agreement", "1 of 3"): (1, 1),
        ("decided_by", "unanimous"): (3, 2), ("decided_by", "majority"): (2, 1), ("decided_by", "tie-breaker"): (1, 1),
        ("at least", "3 of 3"): (3, 2), ("at least", "2 of 3"): (5, 3), ("at least", "1 of 3"): (6, 4),
    }
    for key, (images, correct) in expected.items():
        row = table.loc[key]
        assert (row["images"], row["correct"]) == (images, correct), key
        assert row["coverage"] == pytest.approx(images / 6) and row["accuracy"] == pytest.approx(correct / images)


def test_coverage_curve_takes_the_most_agreed_rows_first():
    votes = [(DOG, DOG, CAT), (CAT, CAT, CAT), (CAT, DOG, FOX), (FOX, FOX, FOX)]
    curve = coverage_curve(np.array([CAT, CAT, CAT, FOX]), vote(probs_for(votes), tie_breaker=0))
    assert curve["votes"].tolist() == [3, 3, 2, 1]
    assert curve["accuracy"].tolist() == pytest.approx([1, 1, 2 / 3, 3 / 4])
    assert curve["coverage"].tolist() == pytest.approx([0.25, 0.5, 0.75, 1.0])


def test_min_agreement_067_means_two_of_three(tmp_path, make_model):
    folder = tmp_path / "images"
    write_good_images(folder, 3)
    for index, label in enumerate((CAT, CAT, DOG)):  # always 2 of 3
        make_model(tmp_path / "models", f"m{index}", "tinyvgg", 32, constant=label)
    models = select_models(tmp_path / "models")
    for level, flagged in ((0.67, False), (0.66, False), (0.7, True), (1.0, True)):
        frame = predict(folder, models, PredictOptions(workers=0, min_agreement=level), quiet=True)
        assert frame["agreement"].tolist() == pytest.approx([2 / 3] * 3)
        assert frame["review"].tolist() == [flagged] * 3, level


# --- the CSV, as pandas reads it ------------------------------------------------------------------


@pytest.mark.parametrize("lazy", [False, True])
def test_csv_dtypes_round_trip_and_member_columns_come_in_name_order(tmp_path, tiny_models, lazy):
    folder = tmp_path / "images"
    write_good_images(folder, 5)
    (folder / "empty.png").write_bytes(b"")
    names = ["tinyvgg-32-copy", "mobilenet_v3_small-40", "tinyvgg-32"]  # not in name order
    frame = predict(folder, select_models(tiny_models, names), PredictOptions(workers=0, probs=True, lazy=lazy,
                                                                              min_agreement=1.0), quiet=True)
    member_columns = [c for c in frame.columns if c.endswith(("_prediction", "_confidence"))]
    assert member_columns == [f"{name}_{kind}" for name in sorted(names) for kind in ("prediction", "confidence")]
    out = tmp_path / "preds.csv"
    write_predictions(frame, out)
    back = read_predictions(out)
    pd.testing.assert_frame_equal(back, frame, check_exact=False, atol=1e-6)
    for column, dtype in DTYPES.items():
        assert str(back[column].dtype) in (dtype, "object"), column  # labels are object: a class may be "NA"
    assert str(back["votes"].dtype) == "Int64" and str(back["review"].dtype) == "boolean"
    errors = back.set_index("path")["error"]
    assert errors["empty.png"] == "empty file" and (errors.drop("empty.png") == "").all()
    # Plain pandas, as the README says: error as text, never float NaN.
    plain = pd.read_csv(out, dtype={"error": str})
    assert not pd.api.types.is_float_dtype(plain["error"])


# --- quorum review ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def colour_models(tmp_path_factory, one_thread):
    """Two tinyvggs fine-tuned on three colour classes and a third member that always says red;
    12 unlabelled images of those colours in two sub-folders: red rows are unanimous, most others not."""
    root = tmp_path_factory.mktemp("colours")
    data = write_labelled_folder(root / "labelled")
    models = root / "models"
    for seed in range(2):
        finetune(recipe(data, models, f"m{seed}", seed=seed), quiet=True)
    classes = tuple(sorted(COLOUR_CLASSES))
    red = save_model(models, "red", "tinyvgg", 32, classes=classes, constant=classes.index("red"))
    # Validated on the shared split like the others: what it would have said there (always red).
    info = json.loads((red / "model.json").read_text())
    info["split"] = json.loads((models / "m0" / "model.json").read_text())["split"]
    (red / "model.json").write_text(json.dumps(info))
    val = pd.read_csv(models / "m0" / "val_predictions.csv")
    val["predicted_label"] = "red"
    for name in classes:
        val[f"p_{name}"] = float(name == "red")
    val.to_csv(red / "val_predictions.csv", index=False)
    unlabelled = root / "unlabelled"
    for index, tint in enumerate(COLOUR_CLASSES.values()):
        for path in write_good_images(root / "staging", 4, tint=tint, seed=10 + index):
            target = unlabelled / "ab"[index % 2] / f"c{index}_{path.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            path.rename(target)
    return data, models, unlabelled


@pytest.fixture
def predicted(colour_models, tmp_path) -> Path:
    """A real predict CSV (with its .json) over a copy of the unlabelled images."""
    _, models, unlabelled = colour_models
    shutil.copytree(unlabelled, tmp_path / "unlabelled")
    out = tmp_path / "preds.csv"
    # Agreement is what these tests are about; test_unknown.py covers the unknown flag (which the
    # colour members, 2 epochs on 16 images, raise on every unlabelled image).
    result = cli("predict", tmp_path / "unlabelled", "--out", out, "--models-dir", models, "--workers", 0, "--quiet",
                 "--no-unknown-flag")
    assert result.exit_code == 0, result.output
    return out


def test_review_puts_exactly_the_flagged_rows_in_their_predicted_class(predicted, tmp_path):
    frame = read_predictions(predicted)
    no_class = frame["unknown"].fillna(False)  # flagged unknown: in _unknown/ whatever the agreement
    flagged = frame[(frame["decided_by"] != "unanimous") | no_class]
    assert 0 < len(flagged) < len(frame)  # both kinds, or the test proves nothing
    out = tmp_path / "review"
    result = cli("review", predicted, "--out", out)
    assert result.exit_code == 0, result.output
    placed = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.parent != out)
    expected = sorted(f"{'_unknown' if no_class[i] else label}/{path}"
                      for i, path, label in zip(flagged.index, flagged["path"], flagged["prediction"]))
    assert placed == expected
    for name in placed:  # the same bytes as the original (a link or a copy of it)
        original = tmp_path / "unlabelled" / name.split("/", 1)[1]
        assert (out / name).read_bytes() == original.read_bytes()
    assert "move it into the folder of its true class" in (out / "README.txt").read_text()
    listing = pd.read_csv(out / "review.csv")
    assert len(listing) == len(flagged) and {"source", "prediction", "m0", "m1", "red"} <= set(listing.columns)
    assert f"Wrote {out}: {len(flagged)} of {len(frame)} rows to review" in result.stderr


def test_review_refuses_an_existing_folder_and_a_changed_file_leaving_nothing(predicted, tmp_path):
    out = tmp_path / "review"
    out.mkdir()
    result = cli("review", predicted, "--out", out)
    assert result.exit_code == 1
    assert result.stderr == f"Error: --out {out} already exists: give a new folder (a review folder is written whole)\n"
    out.rmdir()
    frame = read_predictions(predicted)
    changed = frame.loc[frame["decided_by"] != "unanimous", "path"].iloc[0]
    write_good_images(tmp_path / "other", 1, seed=9)
    os.replace(next((tmp_path / "other").iterdir()), tmp_path / "unlabelled" / changed)
    result = cli("review", predicted, "--out", out)
    assert result.exit_code == 1
    assert f"({changed}): their votes may no longer fit; run quorum predict again" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "preds.csv", "preds.csv.json", "unlabelled"]


def test_review_needs_the_csvs_json(predicted, tmp_path):
    predicted.with_name("preds.csv.json").unlink()
    result = cli("review", predicted, "--out", tmp_path / "review")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {predicted} has no preds.csv.json beside it")


# --- pseudo-labels ------------------------------------------------------------------------------


def recipe(data: Path, models: Path, name: str, **overrides) -> Recipe:
    settings = dict(backbone="tinyvgg", data=str(data), models_dir=str(models), image_size=32, epochs=2,
                    unfreeze_after=1, batch_size=8, workers=0, weights="none", lr=3e-3, finetune_lr=1e-3, name=name)
    return Recipe(**{**settings, **overrides})


@pytest.fixture
def pseudo_run(colour_models, predicted, tmp_path):
    """The colour members' models folder (copied: the tests fine-tune into it) and a real predict CSV."""
    data, models, _ = colour_models
    shutil.copytree(models, tmp_path / "models")
    return data, tmp_path / "models", predicted


def test_pseudo_labelled_rows_train_but_never_reach_validation(pseudo_run, training_sets):
    data, models, preds = pseudo_run
    frame = read_predictions(preds)
    agreed = frame[(frame["status"] == "ok") & (frame["agreement"] >= 0.5)]
    seen = training_sets
    model_dir = finetune(recipe(data, models, "pseudo", pseudo_labels=str(preds), pseudo_min_agreement=0.5), quiet=True)

    unlabelled = {str(preds.parent / "unlabelled" / path) for path in agreed["path"]}
    assert unlabelled <= set(seen["train"]) and len(seen["train"]) == 24 - len(seen["val"]) + len(agreed)
    assert not unlabelled & set(seen["val"])
    split = pd.read_csv(models / "split.csv")
    val = pd.read_csv(model_dir / "val_predictions.csv")
    assert sorted(val["path"]) == sorted(split.loc[split["subset"] == "val", "path"])  # validation is the split's
    info = json.loads((model_dir / "model.json").read_text())["pseudo_labels"]
    assert info["added"] == len(agreed) and info["rows"] == 12 and info["min_agreement"] == 0.5
    assert info["digest"] and sum(info["per_class"].values()) == len(agreed)
    classes = sorted(COLOUR_CLASSES)
    for path, label in zip(agreed["path"], agreed["prediction"]):  # with the vote's label
        assert seen["train"][str(preds.parent / "unlabelled" / path)] == classes.index(label)


def test_pseudo_labels_refuse_a_changed_file_by_name(pseudo_run, tmp_path):
    data, models, preds = pseudo_run
    frame = read_predictions(preds)
    changed = frame.loc[frame["agreement"] == 1.0, "path"].iloc[0]
    target = tmp_path / "unlabelled" / changed
    target.write_bytes(target.read_bytes() + b"\0")
    result = cli("finetune", "tinyvgg", "--data", data, "--models-dir", models, "--image-size", 32, "--epochs", 1,
                 "--weights", "none", "--workers", 0, "--name", "x", "--pseudo-labels", preds)
    assert result.exit_code == 1
    assert result.stderr.endswith(f"changed since {preds} was written ({changed}): their labels may no longer fit; "
                                  "run quorum predict again\n")
    assert not (models / "x").exists()


def test_pseudo_labels_refuse_images_of_the_labelled_folder(pseudo_run, tmp_path):
    data, models, _ = pseudo_run
    preds = tmp_path / "on_labelled.csv"
    write_predictions(predict(data, [models / "m0", models / "m1"], PredictOptions(workers=0, flag_unknown=False),
                              quiet=True), preds)
    with pytest.raises(QuorumError, match=f"has 24 file\\(s\\) of the labelled folder {data}"):
        finetune(recipe(data, models, "leak", pseudo_labels=str(preds), pseudo_min_agreement=0.01), quiet=True)


def test_an_image_a_person_has_labelled_since_trains_with_the_persons_label_only(pseudo_run, tmp_path, training_sets):
    """The loop: a person sorts images into the labelled folder, each under a class the vote did not give it:
    one moved in from review's folder (a hard link: the same file), one copied in (the same bytes), one moved
    out of the unlabelled folder itself (its row's file is gone)."""
    data, models, preds = pseudo_run
    data = Path(shutil.copytree(data, tmp_path / "labelled"))
    frame = read_predictions(preds)
    agreed = frame[(frame["status"] == "ok") & (frame["agreement"] >= 0.5)]
    sorted_by_hand = dict(zip(("linked.png", "copied.png", "moved.png"),
                              agreed[["path", "prediction"]].head(3).itertuples(index=False)))
    unlabelled = preds.parent / "unlabelled"
    person = {name: next(c for c in sorted(COLOUR_CLASSES) if c != vote) for name, (_, vote) in sorted_by_hand.items()}
    for name, (path, _), place in zip(sorted_by_hand, sorted_by_hand.values(), (os.link, shutil.copy, os.rename)):
        place(unlabelled / path, data / person[name] / name)
    seen = training_sets
    model_dir = finetune(recipe(data, models, "loop", pseudo_labels=str(preds), pseudo_min_agreement=0.5),
                         resplit=True, quiet=True)

    assert not {str(unlabelled / path) for path, _ in sorted_by_hand.values()} & set(seen["train"])
    assert len([path for path in seen["train"] if path.startswith(str(unlabelled))]) == len(agreed) - 3
    labelled = {**seen["train"], **{path: None for path in seen["val"]}}  # the split names them from DATA
    for name, label in person.items():
        assert labelled[f"{label}/{name}"] in (None, sorted(COLOUR_CLASSES).index(label))  # the person's label
    info = json.loads((model_dir / "model.json").read_text())["pseudo_labels"]
    assert info["added"] == len(agreed) - 3 and (info["left_out_labelled"], info["left_out_gone"]) == (2, 1)


def test_a_hand_made_class_folder_is_a_new_label_only_with_resplit(tmp_path, capsys):
    data = write_labelled_folder(tmp_path / "labelled")
    load_or_make_split(data, tmp_path, 0.25, 0)
    write_good_images(data / "purple", 3, tint=(150, 40, 160))
    with pytest.raises(QuorumError, match=r"new class folder\(s\): purple \(3 images\)\): add --resplit to make a new "
                                          "split and accept them as new labels"):
        load_or_make_split(data, tmp_path, 0.25, 0)
    split, _ = load_or_make_split(data, tmp_path, 0.25, 0, resplit=True)
    assert "purple" in split.classes
    assert "New label(s) accepted: purple (3 images)" in capsys.readouterr().err


def test_report_says_a_lazy_csvs_members_are_scored_only_where_they_ran(colour_models, tmp_path):
    from quorum.report.build import build_report

    _, models, unlabelled = colour_models
    frame = predict(unlabelled, select_models(models), PredictOptions(workers=0, lazy=True), quiet=True)
    write_predictions(frame, tmp_path / "lazy.csv")
    colours = list(COLOUR_CLASSES)
    truth = [colours[int(Path(path).name[1])] for path in frame["path"]]  # c<index>_...: the tint it was made with
    pd.DataFrame({"path": frame["path"], "label": truth}).to_csv(tmp_path / "labels.csv", index=False)
    report = build_report(models, preds=tmp_path / "lazy.csv", labels=tmp_path / "labels.csv", timing=False)
    ran = int(frame["red_prediction"].notna().sum())
    assert 0 < ran < 12  # the constant member is skipped where the two trained ones agree
    assert report.preds["scores"]["red"]["images"] == ran
    assert any(f"red on {ran} of 12" in note and "only on the rows where it ran" in note for note in report.notes)


@pytest.mark.parametrize("correct, images", [(152, 159), (2, 3), (57, 57)])
def test_a_trust_line_gives_the_validation_accuracy_with_its_wilson_interval(correct, images):
    from quorum.predict.trust_table import on_validation

    p, z = correct / images, 1.959964  # Wilson's score interval, by its formula
    centre = (p + z**2 / (2 * images)) / (1 + z**2 / images)
    half = z / (1 + z**2 / images) * np.sqrt(p * (1 - p) / images + z**2 / (4 * images**2))
    assert on_validation(correct, images) == (f"on validation {p:.0%} right, {images} images, 95% interval "
                                              f"{centre - half:.0%}-{centre + half:.0%}")


def test_a_trust_line_says_what_the_folders_own_rows_should_score_by_their_confidence():
    """The folder's estimate (the mean calibrated confidence of its rows of each kind) comes first; a kind
    seen on the folder only, or a run without validation, still gets it."""
    from quorum.predict.trust_table import decided_by_lines

    y_true = np.array([0, 0, 1, 1])
    voted = np.array([[0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 1, 0]])  # unanimous every time: 3 of 4 right
    table = trust_table(y_true, vote(np.eye(2)[voted] * 0.8 + 0.1, 0))
    confidence = {"unanimous": np.array([0.9, 0.96, 0.99, 0.87]), "majority": np.array([0.6, 0.7])}
    unanimous, majority = decided_by_lines({"unanimous": 0.67, "majority": 0.33}, table, confidence)
    assert unanimous == ("67% unanimous (expected 93% right by their confidence; on validation 75% right, 4 images, "
                         "95% interval 30%-95%)")
    assert majority == "33% majority (expected 65% right by their confidence; none on validation)"
    assert decided_by_lines({"majority": 1.0}, None, confidence) == ["100% majority (expected 65% right by their "
                                                                      "confidence)"]
