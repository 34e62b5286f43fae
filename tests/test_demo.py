"""quorum demo --quick: the whole workflow on sample_data/, through the command line, in a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from quorum.cli import main

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
QUICK_MODELS = ["mobilenet_v2-32", "mobilenet_v2-48", "resnet50-32"]
REPORT_FILES = ["summary.csv", "scores.json", "confusion_matrices.png", "best_vs_ensemble.png", "training_curves.png",
                "accuracy_vs_time.png", "preds_agreement.png", "preds_classes.png", "index.html", "predictions.csv"]


@pytest.mark.slow
def test_quick_demo_runs_start_to_finish(tmp_path, one_thread):
    models, out = tmp_path / "models", tmp_path / "reports"
    result = CliRunner().invoke(main, ["demo", "--quick", "--data", str(SAMPLE / "labelled"),
                                       "--unlabelled", str(SAMPLE / "unlabelled"),
                                       "--labels", str(SAMPLE / "unlabelled_labels.csv"),
                                       "--models-dir", str(models), "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in QUICK_MODELS:
        assert {"model.json", "model.safetensors", "history.csv", "val_predictions.csv"} <= \
               {path.name for path in (models / name).iterdir()}
    for name in REPORT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name

    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == 1000 and (predictions["status"] == "ok").all()
    scores = json.loads((out / "scores.json").read_text())
    assert scores["ensemble"]["members"] == QUICK_MODELS
    assert scores["preds"]["labelled"] == 1000  # every unlabelled image has its true label in the sample
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["model"]) == [*QUICK_MODELS, "ensemble"]
    assert summary["preds_accuracy"].notna().all() and (summary["ms_per_image"] > 0).all()
    assert f"report:      {out / 'index.html'}" in result.output
    # The rules side by side, on the validation split, in the page and the printed outcome.
    assert list(scores["rules"]["rules"]) == ["majority", "soft", "weighted"]
    assert "Vote rules side by side" in (out / "index.html").read_text()
    assert "Vote rules: majority" in result.output


def test_demo_outside_the_quorum_folder_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["demo", "--quick"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: --data sample_data/labelled: no such folder. Run quorum demo in the "
                                    "quorum folder (the one with sample_data/), or give --data")
