"""quorum report: scores against scikit-learn on hand-made predictions, what the vote adds, the refusal
on mismatched splits, --data against predict's own vote, --preds, and every file the report writes."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from image_factory import write_good_images
from quorum.cli import main
from quorum.errors import QuorumError
from quorum.metrics import classification_metrics
from quorum.models import bundle, weights
from quorum.models.registry import get_backbone
from quorum.predict.members import select_models
from quorum.predict.options import PredictOptions
from quorum.predict.pipeline import predict
from quorum.predict.table import columns, write_predictions
from quorum.report import folder as report_folder
from quorum.report.build import ENSEMBLE, build_report
from quorum.report.html import write_report

CLASSES = ("cat", "dog", "fox")
TRUTH = [0, 0, 0, 1, 1, 1, 2, 2, 2]
# Top-1 labels per member. `a` has the best validation accuracy, so it breaks ties.
VOTED = {"a": [0, 0, 1, 1, 1, 0, 2, 2, 2], "b": [0, 1, 1, 1, 2, 1, 2, 0, 1], "c": [0, 2, 2, 1, 0, 2, 2, 1, 1]}
VAL_ACCURACY = {"a": 0.9, "b": 0.8, "c": 0.7}
# Worked by hand: 0 unanimous, 1 tie (a: 0), 2 majority 1, 3 unanimous, 4 tie (a: 1), 5 tie (a: 0),
# 6 unanimous, 7 tie (a: 2), 8 majority 1.
VOTE = [0, 0, 1, 1, 1, 0, 2, 2, 1]
PATHS = [f"{CLASSES[t]}/{i:02d}.png" for i, t in enumerate(TRUTH)]


def probs_for(labels, classes=CLASSES) -> np.ndarray:
    probs = np.full((len(labels), len(classes)), 0.15)
    probs[np.arange(len(labels)), labels] = 0.7
    return probs


def write_handmade(models_dir: Path, name: str, labels, digest: str = "split-1", paths=PATHS, classes=CLASSES,
                   real_weights: bool = False, order=None) -> Path:
    """A model folder written by hand: model.json, val_predictions.csv (rows in `order`), history.csv."""
    model_dir = Path(models_dir) / name
    model_dir.mkdir(parents=True)
    order = list(range(len(paths))) if order is None else order
    frame = pd.DataFrame({"path": [paths[i] for i in order], "true_label": [classes[TRUTH[i]] for i in order],
                          "predicted_label": [classes[labels[i]] for i in order]})
    probs = probs_for(labels, classes)[order]
    for k, label in enumerate(classes):
        frame[f"p_{label}"] = probs[:, k]
    frame.to_csv(model_dir / bundle.VAL_PREDICTIONS, index=False)
    pd.DataFrame({"epoch": [1, 2, 3, 4], "phase": [1, 1, 2, 2], "train_loss": [1.2, 0.9, 0.7, 0.6],
                  "train_accuracy": [0.4, 0.6, 0.7, 0.8], "val_loss": [1.1, 0.95, 0.8, 0.82],
                  "val_accuracy": [0.5, 0.6, 0.7, 0.65]}).to_csv(model_dir / bundle.HISTORY, index=False)
    entry = get_backbone("tinyvgg")
    if real_weights:
        bundle.save_weights(weights.build(entry, len(classes), "none"), model_dir)
    bundle.write_model_json(model_dir, {
        "name": name, "backbone": "tinyvgg", **entry.preprocessing(32).as_dict(), "classes": list(classes),
        "num_params": 1000, "metrics": {"accuracy": VAL_ACCURACY.get(name, 0.5)},
        "split": {"file": "split.csv", "digest": digest, "val_images": len(paths)},
    })
    return model_dir


@pytest.fixture
def trio(tmp_path) -> Path:
    models = tmp_path / "models"
    for k, (name, labels) in enumerate(VOTED.items()):
        order = list(range(len(PATHS)))[::-1] if k == 1 else None  # b's rows in another order: aligned by path
        write_handmade(models, name, labels, order=order)
    return models


def assert_matches_sklearn(scores: dict, y_true, y_pred) -> None:
    assert scores["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert scores["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    # Macro F1 over every class the models know, a class absent from both counting as 0 (as metrics.py does).
    assert scores["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, labels=[0, 1, 2], average="macro",
                                                        zero_division=0))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2], zero_division=0)
    for k, name in enumerate(CLASSES):
        got = scores["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((precision[k], recall[k], f1[k]))
        assert got["support"] == support[k]
    assert scores["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=[0, 1, 2]).tolist()


# --- scores ----------------------------------------------------------------------------------


def test_every_model_and_the_vote_score_as_sklearn_says(trio):
    report = build_report(trio, timing=False)
    for name, labels in VOTED.items():
        assert_matches_sklearn(report.members[name], TRUTH, labels)
    assert_matches_sklearn(report.ensemble["metrics"], TRUTH, VOTE)
    table = report.table.set_index("model")
    assert list(table.index) == ["a", "b", "c", ENSEMBLE]
    assert table.loc[ENSEMBLE, "accuracy"] == pytest.approx(6 / 9)
    assert table.loc["a", "macro_f1"] == pytest.approx(f1_score(TRUTH, VOTED["a"], average="macro"))


@pytest.mark.parametrize(("y_true", "y_pred"), [([1, 1], [1, 1]), ([0, 0, 1], [0, 2, 1]), ([2], [0])])
def test_balanced_accuracy_is_sklearns_without_its_warnings(y_true, y_pred, recwarn):
    """Validation of one class (a class of one image), or a prediction of a class validation lacks: sklearn's
    balanced_accuracy_score printed a UserWarning into finetune's output."""
    import warnings

    scores = classification_metrics(y_true, y_pred, ("cat", "dog", "fox"))
    assert not [str(w.message) for w in recwarn]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert scores["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))


def test_what_the_vote_adds(trio):
    ensemble = build_report(trio, timing=False).ensemble
    assert ensemble["tie_breaker"] == "a"
    assert ensemble["ceiling"] == pytest.approx(8 / 9)  # only image 2 has no member right
    assert ensemble["all_wrong"] == 1
    assert ensemble["decided_by"] == {"unanimous": 3, "majority": 2, "tie-breaker": 4}
    assert (ensemble["tie_breaker_decided"], ensemble["tie_breaker_right"]) == (4, 3)
    agreement = np.array(ensemble["pairwise_agreement"])
    assert agreement[0, 1] == agreement[1, 0] == pytest.approx(4 / 9)
    assert np.diag(agreement) == pytest.approx(1.0)
    # Without a, b breaks ties (the next best validation accuracy); without b or c, a decides every tie.
    assert ensemble["leave_one_out"] == pytest.approx({"a": 4 / 9, "b": 7 / 9, "c": 7 / 9})


def test_named_tie_breaker_changes_the_ties(trio):
    ensemble = build_report(trio, tie_breaker="c", timing=False).ensemble
    assert ensemble["tie_breaker"] == "c"
    expected = [0, 2, 1, 1, 0, 2, 2, 1, 1]  # ties (1, 4, 5, 7) go to c's label
    assert_matches_sklearn(ensemble["metrics"], TRUTH, expected)


def test_refuses_the_vote_when_models_were_validated_on_different_splits(tmp_path):
    models = tmp_path / "models"
    write_handmade(models, "a", VOTED["a"], digest="split-1")
    write_handmade(models, "b", VOTED["b"], digest="split-2")
    report = build_report(models, timing=False)
    assert report.ensemble is None
    assert list(report.table["model"]) == ["a", "b"]
    assert any("validated on different splits (a: split-1, b: split-2)" in note and "--data" in note
               for note in report.notes)
    assert_matches_sklearn(report.members["b"], TRUTH, VOTED["b"])  # each model is still scored


def test_refuses_the_vote_when_the_validation_images_differ(tmp_path):
    models = tmp_path / "models"
    write_handmade(models, "a", VOTED["a"])
    write_handmade(models, "b", VOTED["b"], paths=[path.replace(".png", ".jpg") for path in PATHS])
    report = build_report(models, timing=False)
    assert report.ensemble is None
    assert any("b was validated on other images than a" in note for note in report.notes)


def test_one_model_is_reported_without_an_ensemble_row(tmp_path):
    write_handmade(tmp_path / "models", "a", VOTED["a"])
    report = build_report(tmp_path / "models", timing=False)
    assert report.ensemble is None and list(report.table["model"]) == ["a"]
    assert any(note.startswith("only one model (a)") for note in report.notes)


def test_models_over_different_classes_are_refused(tmp_path):
    write_handmade(tmp_path / "models", "a", VOTED["a"])
    write_handmade(tmp_path / "models", "b", VOTED["b"], classes=("cat", "dog", "owl"))
    with pytest.raises(QuorumError, match=r"models disagree on classes: a has \[cat, dog, fox\], b has"):
        build_report(tmp_path / "models", timing=False)


# --- files -----------------------------------------------------------------------------------


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [value for key, value in attrs if key in ("src", "href") and value]


def check_page(out: Path, written: list[Path]) -> str:
    page = (out / "index.html").read_text()
    parser = _Links()
    parser.feed(page)
    inline = [link for link in parser.links if link.startswith("data:image/png;base64,")]
    files = [link for link in parser.links if not link.startswith("data:")]
    assert all((out / link).is_file() for link in files), files
    pngs = [path for path in written if path.suffix == ".png"]
    assert len(inline) == len(pngs)  # every picture is in the page itself
    assert {out / link for link in files} == set(written) - {out / "index.html"}
    return page


def test_writes_every_file_and_the_page_links_only_files_that_exist(trio, tmp_path):
    for name in VOTED:  # real weights, so the time per image can be measured
        bundle.save_weights(weights.build(get_backbone("tinyvgg"), 3, "none"), trio / name)
    report = build_report(trio, timing=True)
    out = tmp_path / "reports"
    written = write_report(report, out)
    names = ["scores.json", "summary.csv", "confusion_matrices.png", "best_vs_ensemble.png",
             "training_curves.png", "accuracy_vs_time.png", "coverage_accuracy.png", "reliability.png",
             "index.html"]
    assert [path.name for path in written] == names
    assert set(names) <= set(report_folder.FILES)  # the names a report may replace in an earlier report's folder
    assert all(path.is_file() and path.stat().st_size > 0 for path in written)
    assert (report.table["ms_per_image"] > 0).all()
    check_page(out, written)
    scores = json.loads((out / "scores.json").read_text())
    assert scores["ensemble"]["metrics"]["accuracy"] == pytest.approx(6 / 9)
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["model"]) == ["a", "b", "c", ENSEMBLE]


def test_report_never_replaces_a_users_files_in_its_out(trio, tmp_path):
    """--out may exist (reports/ is written again and again), but a report replaces only an earlier report's files:
    never a user's index.html or summary.csv."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>my site</h1>")
    (site / "summary.csv").write_text("my,numbers\n")
    before = {path.name: path.read_bytes() for path in site.iterdir()}
    result = CliRunner().invoke(main, ["report", "--models-dir", str(trio), "--out", str(site), "--no-timing", "-q"])
    assert (result.exit_code, result.output) == (1, f"Error: --out {site} holds summary.csv, index.html, which "
                                                    "quorum report did not write: choose a new folder (or an "
                                                    "earlier report's)\n")
    assert {path.name: path.read_bytes() for path in site.iterdir()} == before
    # An earlier report's folder is written again, also one whose report stopped after its first file.
    for leave in ("index.html", "scores.json"):
        out = tmp_path / f"reports-{leave}"
        assert CliRunner().invoke(main, ["report", "--models-dir", str(trio), "--out", str(out), "--no-timing",
                                         "-q"]).exit_code == 0
        for path in out.iterdir():
            if path.name != leave:
                path.unlink()
        result = CliRunner().invoke(main, ["report", "--models-dir", str(trio), "--out", str(out), "--no-timing", "-q"])
        assert result.exit_code == 0, result.output


@pytest.mark.parametrize("history", ["", "garbage,,,\n", "epoch,phase\n1,1\n"])
def test_a_broken_history_leaves_out_that_models_curves_with_a_note(trio, tmp_path, history):
    """An emptied or edited history.csv crashed the report (EmptyDataError, KeyError)."""
    (trio / "a" / "history.csv").write_text(history)
    result = CliRunner().invoke(main, ["report", "--models-dir", str(trio), "--out", str(tmp_path / "r"),
                                       "--no-timing", "-q"])
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "r" / "scores.json").read_text())
    assert (f"{trio / 'a' / 'history.csv'} is broken (it needs the columns epoch, train_loss, val_loss, "
            "train_accuracy, val_accuracy): a's training curves are left out") in scores["notes"]


def test_a_second_report_of_the_same_out_stops_at_once(trio, tmp_path):
    from quorum import files

    out = tmp_path / "r"
    with files.exclusive(tmp_path / ".r.lock", "held by the test"):  # what a running report holds
        result = CliRunner().invoke(main, ["report", "--models-dir", str(trio), "--out", str(out), "--no-timing", "-q"])
    assert (result.exit_code, result.output) == (1, f"Error: another quorum report is writing {out} now: wait for "
                                                    "it, or choose another --out\n")
    assert not out.exists()


def test_text_in_the_page_is_escaped(tmp_path):
    classes = ("<b>cat</b>", "dog", "fox")
    write_handmade(tmp_path / "models", "a", VOTED["a"], classes=classes)
    write_handmade(tmp_path / "models", "b", VOTED["b"], classes=classes)
    written = write_report(build_report(tmp_path / "models", timing=False), tmp_path / "out")
    page = check_page(tmp_path / "out", written)
    assert "&lt;b&gt;cat&lt;/b&gt;" in page and "<b>cat</b>" not in page


# --- --preds and --data ------------------------------------------------------------------------


def handmade_preds(path: Path) -> Path:
    """A predict CSV for members a and b with --min-agreement: three voted rows (x3 flagged unknown) and one
    unreadable file."""
    header = columns(["a", "b"], CLASSES, with_probs=False, with_review=True)
    rows = [
        ["x1.png", "cat", 2, 2, 1.0, "unanimous", 0.8, "cat", 0.8, "cat", 0.8, 0.5, False, False, "ok", ""],
        ["x2.png", "dog", 1, 2, 0.5, "tie-breaker", 0.6, "dog", 0.7, "cat", 0.5, 0.9, False, True, "ok", ""],
        ["x3.png", "fox", 2, 2, 1.0, "unanimous", 0.9, "fox", 0.9, "fox", 0.9, 1.0, True, False, "ok", ""],
        ["broken.jpg", *[""] * 13, "error", "empty file"],
    ]
    pd.DataFrame(rows, columns=header).to_csv(path, index=False)
    return path


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # sklearn's, in the reference scores
def test_preds_summary_and_scores_against_true_labels(trio, tmp_path):
    preds = handmade_preds(tmp_path / "preds.csv")
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"path": ["x1.png", "x2.png", "x3.png"], "label": ["cat", "cat", "fox"]}).to_csv(labels, index=False)
    report = build_report(trio, preds=preds, labels=labels, timing=False)
    summary = report.preds
    assert summary["members"] == ["a", "b"] and summary["rows"] == 4
    assert summary["errors"] == [{"path": "broken.jpg", "error": "empty file"}]
    assert [row["path"] for row in summary["review"]] == ["x2.png", "x3.png"]  # x3: flagged unknown
    assert summary["no_class"] == 1 and [row["unknown"] for row in summary["review"]] == [False, True]
    assert summary["predicted"] == {"cat": 1, "dog": 1, "fox": 1}
    assert summary["agreement"] == {"0.500": 1, "1.000": 2}
    assert_matches_sklearn(summary["scores"]["ensemble"], [0, 0, 2], [0, 1, 2])
    assert_matches_sklearn(summary["scores"]["b"], [0, 0, 2], [0, 0, 2])
    # The table's column: each model's accuracy on the labelled rows, where the CSV has it as a member.
    table = report.table.set_index("model")["preds_accuracy"]
    assert table[["a", "b", ENSEMBLE]].tolist() == pytest.approx([2 / 3, 1.0, 2 / 3]) and pd.isna(table["c"])
    written = write_report(report, tmp_path / "out")
    assert {"preds_agreement.png", "preds_classes.png"} <= {path.name for path in written}
    page = check_page(tmp_path / "out", written)
    assert "Flagged for review: 2" in page and "the 1 rows flagged unknown" in page and "empty file" in page


def test_the_trust_table_gives_what_the_preds_folders_own_rows_should_score(trio, tmp_path):
    """With a --preds CSV of the same members, each trust line also gets the folder's rows of that kind (rows
    flagged unknown left out) and their mean calibrated confidence: predict's trust-line estimate."""
    header = columns(["a", "b", "c"], CLASSES, with_probs=False, with_review=False)
    rows = [  # path, prediction, votes, members, agreement, decided_by, confidence, a, b, c, unknown_score, unknown
        ["x1.png", "cat", 3, 3, 1.0, "unanimous", 0.8, "cat", 0.8, "cat", 0.8, "cat", 0.8, 0.1, False, "ok", ""],
        ["x2.png", "dog", 2, 3, 0.667, "majority", 0.6, "dog", 0.7, "dog", 0.5, "cat", 0.5, 0.2, False, "ok", ""],
        ["x3.png", "fox", 3, 3, 1.0, "unanimous", 0.9, "fox", 0.9, "fox", 0.9, "fox", 0.9, 1.0, True, "ok", ""],
        ["x4.png", "cat", 3, 3, 1.0, "unanimous", 0.7, "cat", 0.7, "cat", 0.7, "cat", 0.7, 0.1, False, "ok", ""],
    ]
    pd.DataFrame(rows, columns=header).to_csv(tmp_path / "preds.csv", index=False)
    report = build_report(trio, preds=tmp_path / "preds.csv", timing=False)
    folder = report.trust.set_index(["group", "level"])
    expected = {("decided_by", "unanimous"): (2, 0.75), ("decided_by", "majority"): (1, 0.6),
                ("agreement", "3 of 3"): (2, 0.75), ("agreement", "2 of 3"): (1, 0.6),
                ("at least", "3 of 3"): (2, 0.75), ("at least", "2 of 3"): (3, 0.7), ("at least", "1 of 3"): (3, 0.7)}
    for line, (count, confidence) in expected.items():
        assert folder.loc[line, "folder_rows"] == count
        assert folder.loc[line, "folder_expected"] == pytest.approx(confidence)
    assert folder.loc[("decided_by", "tie-breaker"), "folder_rows"] == 0
    assert pd.isna(folder.loc[("decided_by", "tie-breaker"), "folder_expected"])
    page = check_page(tmp_path / "out", write_report(report, tmp_path / "out"))
    assert "expected there" in page and "75.0%" in page
    # --lazy: c skipped on x2, so its exact agreement is unknown; at least 2 of 3 still holds.
    rows[1][2], rows[1][4], rows[1][11:13] = "", "", ["", ""]  # votes and agreement unknown, c not run
    pd.DataFrame(rows, columns=header).to_csv(tmp_path / "lazy.csv", index=False)
    lazy = build_report(trio, preds=tmp_path / "lazy.csv", timing=False).trust.set_index(["group", "level"])
    assert pd.isna(lazy.loc[("agreement", "3 of 3"), "folder_rows"])
    assert lazy.loc[("at least", "2 of 3"), "folder_rows"] == 3
    # A CSV of other members (a and b only) says nothing about this trio's lines.
    other = build_report(trio, preds=handmade_preds(tmp_path / "ab.csv"), timing=False)
    assert "folder_expected" not in other.trust.columns
    assert "--preds was voted by a, b, not by the models reported here (a, b, c): its figures are that run's" \
        in other.notes


@pytest.mark.parametrize("content, message", [
    (None, r"--preds .*missing.csv does not exist: write one with quorum predict FOLDER --out"),
    ("path,label\nx.png,cat\n", r"is not a quorum predict CSV \(no column prediction, "),
])
def test_preds_that_is_not_a_predict_csv_is_refused(trio, tmp_path, content, message):
    preds = tmp_path / "missing.csv"
    if content is not None:
        preds.write_text(content)
    with pytest.raises(QuorumError, match=message):
        build_report(trio, preds=preds, timing=False)


def test_data_scores_the_same_vote_predict_casts(tiny_models, tmp_path, one_thread):
    for seed, name in enumerate(("cat", "dog", "fox")):
        write_good_images(tmp_path / "test" / name, 4, size=(48, 40), seed=seed)
    report = build_report(tiny_models, data=tmp_path / "test", timing=False, workers=0, quiet=True)
    assert report.source == f"the labelled folder {tmp_path / 'test'} (12 images)"
    frame = predict(tmp_path / "test", select_models(tiny_models), PredictOptions(workers=0), quiet=True)
    truth = [path.split("/")[0] for path in frame["path"]]
    index = {name: i for i, name in enumerate(report.classes)}
    expected = classification_metrics([index[t] for t in truth], frame["prediction"].map(index), report.classes)
    assert report.ensemble["metrics"] == expected
    for name in report.names:
        assert report.members[name] == classification_metrics([index[t] for t in truth],
                                                              frame[f"{name}_prediction"].map(index), report.classes)


def test_report_reads_a_real_predict_csv(trio, tiny_models, tmp_path, one_thread):
    write_good_images(tmp_path / "unlabelled", 5, size=(48, 40))
    frame = predict(tmp_path / "unlabelled", select_models(tiny_models), PredictOptions(workers=0, min_agreement=0.9),
                    quiet=True)
    write_predictions(frame, tmp_path / "preds.csv")
    summary = build_report(trio, preds=tmp_path / "preds.csv", timing=False).preds
    assert summary["members"] == frame.attrs["members"] and summary["rows"] == 5
    assert len(summary["review"]) == int(frame["review"].sum())
    assert summary["predicted"] == frame["prediction"].value_counts().to_dict()


# --- the command line -----------------------------------------------------------------------------


def test_cli_writes_the_report(trio, tmp_path):
    out = tmp_path / "reports"
    result = CliRunner().invoke(main, ["report", "--models-dir", str(trio), "--out", str(out), "--no-timing"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    # Said at once, before anything slow, even when stderr is a log file rather than a terminal.
    assert lines[0] == f"Reporting on 3 models in {trio}: a, b, c (tie-breaker a)"
    # coverage_accuracy.png, reliability.png among them
    assert "Drawing the pictures" in lines[-2] and lines[-1] == f"Wrote {out / 'index.html'} and 7 more files in {out}"
    # The table's rows: each model's accuracy and macro F1 (worked by hand above), the ensemble last.
    rows = {cells[1]: cells for cells in ([c.strip() for c in line.split("│")]
                                          for line in lines if line.startswith("│"))}
    assert [rows[name][6] for name in ("a", "b", "c", "ensemble")] == ["77.8%", "44.4%", "33.3%", "66.7%"]
    assert [rows[name][8] for name in ("a", "b", "c", "ensemble")] == ["0.778", "0.433", "0.340", "0.679"]
    summary = pd.read_csv(out / "summary.csv")
    assert summary["model"].tolist() == ["a", "b", "c", "ensemble"]
    assert summary["accuracy"].round(4).tolist() == [0.7778, 0.4444, 0.3333, 0.6667]
    assert (out / "index.html").is_file()


def test_cli_without_models_names_the_fix(tmp_path):
    result = CliRunner().invoke(main, ["report", "--models-dir", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: no models in {tmp_path / 'none'}: fine-tune one with `quorum finetune")


def test_cli_errors_are_one_line_that_names_the_fix(trio, tmp_path):
    not_preds = tmp_path / "labels.csv"
    not_preds.write_text("path,label\nx.png,cat\n")
    other_classes = handmade_preds(tmp_path / "other.csv")
    other_classes.write_text(other_classes.read_text().replace("fox", "zebra"))
    cases = [
        (["--preds", str(tmp_path / "p.csv")],
         f"Error: --preds {tmp_path / 'p.csv'} does not exist: write one with quorum predict FOLDER --out "
         f"{tmp_path / 'p.csv'}\n"),
        (["--preds", str(not_preds)],
         f"Error: --preds {not_preds} is not a quorum predict CSV (no column prediction, votes, members, agreement, "
         f"decided_by, confidence, status, error): write one with quorum predict FOLDER --out {not_preds}\n"),
        (["--labels", str(not_preds)], "Error: --labels holds the true labels of a --preds CSV: add --preds "
                                       "PREDICTIONS.csv\n"),
        # Labels of another folder (or the broken file's alone): no readable row to score, where sklearn crashed.
        (["--preds", str(handmade_preds(tmp_path / "preds.csv")), "--labels", str(not_preds)],
         f"Error: --labels {not_preds} names none of the 3 readable rows of --preds {tmp_path / 'preds.csv'} (their "
         "paths are relative to the folder predict ran on, e.g. x1.png): give the true labels of that folder's "
         "files\n"),
        (["--tie-breaker", "z"], "Error: --tie-breaker z is not one of the members: choose from a, b, c\n"),
        # Another project's CSV (models of other classes): nothing to set beside these models, where it was shown.
        (["--preds", str(other_classes)], f"Error: --preds {other_classes} predicts classes these models do not have "
                                          "(zebra; theirs: cat, dog, fox): give a CSV that quorum predict wrote with "
                                          "these models\n"),
    ]
    for options, message in cases:
        result = CliRunner().invoke(main, ["report", "--models-dir", str(trio), "--no-timing", *options])
        assert (result.exit_code, result.output) == (1, message)


def test_predict_report_and_demo_take_one_tie_breaker_whatever_the_order(tmp_path, one_thread):
    """Equal validation accuracies: the first by name breaks ties in predict's CSV and in the report (the
    demo calls both with its models in training order), however the models are listed."""
    models = tmp_path / "models"
    for name in ("zeta", "alpha", "mid"):  # none in VAL_ACCURACY: 0.5 each
        write_handmade(models, name, VOTED["a"], real_weights=True)
    write_good_images(tmp_path / "unlabelled", 2, size=(40, 40))
    for order in (("zeta", "alpha", "mid"), ("mid", "zeta", "alpha")):
        frame = predict(tmp_path / "unlabelled", [models / name for name in order], PredictOptions(workers=0),
                        quiet=True)
        report = build_report(models, order, timing=False, quiet=True)
        assert (frame.attrs["tie_breaker"], report.ensemble["tie_breaker"]) == ("alpha", "alpha")
