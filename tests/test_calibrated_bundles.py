"""Calibration in the product: finetune stores a temperature, older bundles get one, every probability
quorum writes (both engines, the stored validation predictions) is calibrate(raw, T), labels unchanged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from image_factory import write_good_images, write_labelled_folder
from quorum.calibration import calibrate, expected_calibration_error, fit_temperature
from quorum.cli import main
from quorum.data.images import load_rgb
from quorum.models import bundle, temperature
from quorum.models.inference import TorchInference
from quorum.predict.members import read_members, select_models
from quorum.predict.options import PredictOptions
from quorum.predict.pipeline import predict
from quorum.predict.vote import fit_vote_temperature
from quorum.report.sources import read_validation
from quorum.train.finetune import finetune
from quorum.train.recipe import Recipe

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tinyvgg-32 fine-tuned for one epoch on three colour classes: a real bundle with model.onnx."""
    root = tmp_path_factory.mktemp("calibrated")
    recipe = Recipe(backbone="tinyvgg", data=str(write_labelled_folder(root / "data")), models_dir=str(root / "models"),
                    image_size=32, epochs=1, unfreeze_after=0, batch_size=8, workers=0, weights="none", lr=3e-3)
    return finetune(recipe, quiet=True)


def copy_bundle(model_dir: Path, models_dir: Path, name: str, **changes) -> Path:
    """A copy of the bundle under another name; `changes` replace model.json keys (None removes one)."""
    copy = Path(shutil.copytree(model_dir, models_dir / name))
    raw = {**json.loads((copy / bundle.MODEL_JSON).read_text()), **changes, "name": name}
    (copy / bundle.MODEL_JSON).write_text(json.dumps({k: v for k, v in raw.items() if v is not None}))
    return copy


def raw_probs(model_dir: Path, paths: list[Path]) -> np.ndarray:
    """The network's own softmax, before any temperature."""
    model, info = bundle.load_model(model_dir)
    run = TorchInference(model, info.preprocessing, torch.device("cpu"))
    crop = info.preprocessing.eval_pixels()
    return run(torch.stack([crop(load_rgb(path)) for path in paths]))


def test_finetune_stores_the_temperature_fitted_on_its_validation_predictions(trained):
    block = json.loads((trained / bundle.MODEL_JSON).read_text())["calibration"]
    _, labels, probs = bundle.read_val_predictions(trained, ("blue", "green", "red"))
    assert block["fitted_on"] == "validation" and block["images"] == len(labels) == 6
    assert block["temperature"] == pytest.approx(fit_temperature(probs, labels), abs=1e-5)
    assert block["ece_before"] == pytest.approx(expected_calibration_error(probs, labels), abs=1e-6)
    assert block["ece_after"] == pytest.approx(
        expected_calibration_error(calibrate(probs, block["temperature"]), labels), abs=1e-6)
    # val_predictions.csv keeps the raw probabilities: fitting again gives the stored block back.
    assert temperature.fit_bundle(bundle.read_info(trained)) == block


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_predict_writes_calibrated_probabilities_with_unchanged_labels(trained, tmp_path, engine):
    models = tmp_path / "models"
    # Two members with the same weights and chosen temperatures, so calibrated and raw cannot coincide.
    for name, t in (("hot", 2.5), ("cold", 0.4)):
        copy_bundle(trained, models, name, calibration={"temperature": t, "fitted_on": "validation"})
    folder = tmp_path / "unlabelled"
    paths = write_good_images(folder, 6, size=(40, 30), tint=(0, 0, 200))
    frame = predict(folder, select_models(models), PredictOptions(engine=engine, probs=True, workers=0), quiet=True)
    vote_temperature = frame.attrs["vote"]["temperature"]  # the vote's own, from the members' validation rows
    validation = np.stack([read_validation(info).probs for info in read_members(select_models(models))])
    assert vote_temperature == fit_vote_temperature(validation, read_validation(bundle.read_info(trained)).y_true)
    frame = frame.set_index("path")
    raw = raw_probs(trained, paths)
    rows = [path.name for path in paths]
    for name, t in (("hot", 2.5), ("cold", 0.4)):
        expected = calibrate(raw, t)
        np.testing.assert_allclose(frame.loc[rows, f"{name}_confidence"], expected.max(axis=1), atol=2e-4)
        assert list(frame.loc[rows, f"{name}_prediction"]) == [("blue", "green", "red")[k] for k in raw.argmax(1)]
    mean = calibrate((calibrate(raw, 2.5) + calibrate(raw, 0.4)) / 2, vote_temperature)
    np.testing.assert_allclose(frame.loc[rows, ["p_blue", "p_green", "p_red"]], mean, atol=2e-4)
    np.testing.assert_allclose(frame.loc[rows, "confidence"], mean.max(axis=1), atol=2e-4)


def test_an_older_bundle_is_calibrated_from_its_val_predictions_and_quorum_calibrate_stores_it(trained, tmp_path,
                                                                                              capsys):
    stored = json.loads((trained / bundle.MODEL_JSON).read_text())["calibration"]
    old = copy_bundle(trained, tmp_path / "models", "old", calibration=None)
    info = bundle.read_info(old)
    assert temperature.stored(info) is None
    assert temperature.temperature(info) == temperature.temperature(info) == stored["temperature"]
    said = capsys.readouterr().err
    assert said.count("old has no calibration in its model.json") == 1  # fitted once, said once
    _, _, probs = bundle.read_val_predictions(old, info.classes)
    np.testing.assert_allclose(read_validation(info).probs, calibrate(probs, stored["temperature"]))

    result = CliRunner().invoke(main, ["calibrate", "old", "--models-dir", str(tmp_path / "models")])
    assert result.exit_code == 0, result.output
    assert json.loads((old / bundle.MODEL_JSON).read_text())["calibration"] == stored


def test_calibrate_without_val_predictions_is_one_error_line_and_writes_nothing(trained, tmp_path):
    models = tmp_path / "models"
    good = copy_bundle(trained, models, "good", calibration=None)
    bare = copy_bundle(trained, models, "bare", calibration=None)
    (bare / bundle.VAL_PREDICTIONS).unlink()
    before = {path: (path / bundle.MODEL_JSON).read_bytes() for path in (good, bare)}
    result = CliRunner().invoke(main, ["calibrate", "--models-dir", str(models)])
    assert result.exit_code == 1
    assert result.output == (f"Error: cannot calibrate bare: {bare} has no val_predictions.csv: "
                             "fine-tune it again with quorum finetune\n")
    assert {path: (path / bundle.MODEL_JSON).read_bytes() for path in (good, bare)} == before


@pytest.mark.parametrize("value", ["nan", "-0.2", "3"])
def test_calibrate_refuses_validation_probabilities_that_are_not_probabilities(trained, tmp_path, value):
    """An edited val_predictions.csv cell: a temperature was fitted and stored from it (NaN read as a number)."""
    edited = copy_bundle(trained, tmp_path / "models", "edited", calibration=None)
    table = (edited / bundle.VAL_PREDICTIONS).read_text().splitlines()
    cells = table[1].split(",")
    cells[-1] = value  # the last class's probability of the first image
    (edited / bundle.VAL_PREDICTIONS).write_text("\n".join([table[0], ",".join(cells), *table[2:]]) + "\n")
    before = (edited / bundle.MODEL_JSON).read_bytes()
    result = CliRunner().invoke(main, ["calibrate", "--models-dir", str(tmp_path / "models")])
    broken = edited / bundle.VAL_PREDICTIONS
    assert (result.exit_code, result.output) == (1, f"Error: cannot calibrate edited: {broken} is broken "
                                                    "(probabilities that are not numbers from 0 to 1): fine-tune "
                                                    "edited again\n")
    assert (edited / bundle.MODEL_JSON).read_bytes() == before


def test_predict_with_a_bundle_that_cannot_be_calibrated_warns_by_name_and_keeps_raw_probabilities(trained, tmp_path,
                                                                                                  capsys):
    bare = copy_bundle(trained, tmp_path / "models", "bare", calibration=None)
    (bare / bundle.VAL_PREDICTIONS).unlink()
    folder = tmp_path / "unlabelled"
    paths = write_good_images(folder, 3, size=(40, 30))
    frame = predict(folder, [bare], PredictOptions(engine="torch", probs=True, workers=0), quiet=True).set_index("path")
    assert "Warning: bare's probabilities are not calibrated (temperature 1)" in capsys.readouterr().err
    np.testing.assert_allclose(frame.loc[[p.name for p in paths], "bare_confidence"],
                               raw_probs(trained, paths).max(axis=1), atol=1e-5)


def test_report_shows_ece_before_and_after_and_a_reliability_diagram(trained, tmp_path):
    from quorum.report.build import build_report
    from quorum.report.html import write_report

    models = tmp_path / "models"
    copy_bundle(trained, models, "fitted")
    copy_bundle(trained, models, "hot", calibration={"temperature": 2.5})
    report = build_report(models, timing=False, quiet=True)
    _, labels, raw = bundle.read_val_predictions(trained, ("blue", "green", "red"))
    fitted = json.loads((trained / bundle.MODEL_JSON).read_text())["calibration"]["temperature"]
    table = report.table.set_index("model")
    for name, t in (("fitted", fitted), ("hot", 2.5)):
        assert table.loc[name, "ece_raw"] == pytest.approx(expected_calibration_error(raw, labels), abs=1e-5)
        assert table.loc[name, "ece"] == pytest.approx(expected_calibration_error(calibrate(raw, t), labels), abs=1e-5)
    assert np.isfinite(table.loc["ensemble", ["ece_raw", "ece"]].astype(float)).all()
    written = write_report(report, tmp_path / "report")
    assert (tmp_path / "report" / "reliability.png") in written
    assert "<h2>Calibration</h2>" in (tmp_path / "report" / "index.html").read_text()


def test_calibrate_refuses_a_model_a_finetune_is_making(trained, tmp_path):
    """finetune holds the model's lock while it makes and swaps the folder: calibrate must not write meanwhile."""
    from quorum import files

    old = copy_bundle(trained, tmp_path / "models", "old", calibration=None)
    before = (old / bundle.MODEL_JSON).read_bytes()
    with files.exclusive(bundle.lock_path(old)):
        result = CliRunner().invoke(main, ["calibrate", "old", "--models-dir", str(tmp_path / "models")])
    assert result.exit_code == 1
    assert result.output == (f"Error: another quorum run is making or calibrating {old} now: "
                             "calibrate it when that run has finished\n")
    assert (old / bundle.MODEL_JSON).read_bytes() == before


def test_quorum_calibrate_gives_an_older_bundle_its_training_features(trained, tmp_path):
    """A bundle from before features.npz: calibrate makes the file finetune would have written, from the
    labelled folder and split the bundle records; without that folder it says why and predict falls back."""
    models = Path(shutil.copytree(trained.parent, tmp_path / "models"))
    written = np.load(trained / "features.npz")
    (models / trained.name / "features.npz").unlink()
    result = CliRunner().invoke(main, ["calibrate", "--models-dir", str(models)])
    assert result.exit_code == 0, result.output
    remade = np.load(models / trained.name / "features.npz")
    assert list(remade["val_paths"]) == list(written["val_paths"])
    for share in ("train", "val"):
        np.testing.assert_allclose(remade[share].astype(np.float32), written[share].astype(np.float32), atol=1e-2)

    (models / trained.name / "features.npz").unlink()
    data = Path(json.loads((trained / bundle.MODEL_JSON).read_text())["split"]["root"])
    moved = data.rename(data.with_name("moved"))
    try:
        result = CliRunner().invoke(main, ["calibrate", "--models-dir", str(models)])
    finally:
        moved.rename(data)
    assert result.exit_code == 0, result.output
    assert f"Warning: no features.npz for {trained.name}: its labelled folder ({data}) or" in " ".join(
        result.output.split())
    assert not (models / trained.name / "features.npz").exists()
