"""--vote soft|weighted and --tta: each rule is exactly what it says, on tiny real models and images."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageOps

from conftest import CLASSES
from image_factory import write_good_images
from quorum.cli import main
from quorum.models.bundle import VAL_PREDICTIONS
from quorum.predict.members import load_members, read_members, select_models
from quorum.predict.options import PredictOptions
from quorum.predict.pipeline import predict, predict_arrays
from quorum.predict.table import read_predictions
from quorum.predict.vote import vote
from quorum.predict.weights import caruana_weights, log_loss_weights

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py
CAT, DOG, FOX = range(3)
P_COLUMNS = [f"p_{name}" for name in CLASSES]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    write_good_images(root, 8, size=(48, 40), seed=3)
    return root


def cli(*args):
    result = CliRunner().invoke(main, [*map(str, args)])
    assert "Traceback" not in result.output
    return result


def member_probs(folder: Path, models_dir: Path, tta: int = 1) -> np.ndarray:
    """(members, images, classes) as predict computes them, members in name order, files in scan order."""
    from quorum.data.images import scan_images

    members = load_members(read_members(select_models(models_dir)), torch.device("cpu"))
    return predict_arrays(scan_images(folder).images, members, 0, torch.device("cpu"), workers=0, quiet=True,
                          tta=tta).probs


def copy_models(source: Path, target: Path) -> Path:
    for model in source.iterdir():
        (target / model.name).mkdir(parents=True)
        for file in model.iterdir():
            (target / model.name / file.name).write_bytes(file.read_bytes())
    return target


def with_validation(models_dir: Path, images: Path, truth: list[int]) -> Path:
    """Give each model a val_predictions.csv: its real probabilities on `images`, labelled `truth`."""
    from quorum.data.images import scan_images

    paths = [path.relative_to(images).as_posix() for path in scan_images(images).images]
    for name, probs in zip(sorted(p.name for p in models_dir.iterdir()), member_probs(images, models_dir)):
        frame = pd.DataFrame({"path": paths, "true_label": [CLASSES[t] for t in truth]})
        frame[P_COLUMNS] = probs
        frame.to_csv(models_dir / name / VAL_PREDICTIONS, index=False)
    return models_dir


# --- the rules on hand-made probabilities ---------------------------------------------------------


def test_soft_follows_the_sure_member_where_majority_counts_heads():
    probs = np.array([[[0.40, 0.35, 0.25]], [[0.40, 0.35, 0.25]], [[0.0, 0.95, 0.05]]])
    majority, soft = vote(probs, 0), vote(probs, 0, rule="soft")
    assert (majority.label[0], soft.label[0]) == (CAT, DOG)
    # votes and decided_by still describe the members' labels: one voted DOG, and two of three agreed.
    assert (soft.votes[0], soft.decided_by[0]) == (1, "majority")
    assert soft.confidence[0] == pytest.approx((0.35 + 0.35 + 0.95) / 3)


def test_weighted_with_equal_weights_is_soft_and_a_zero_weight_silences_a_member():
    probs = np.random.default_rng(0).dirichlet(np.ones(3), size=(3, 50))
    assert np.array_equal(vote(probs, 0, rule="weighted", weights=[2, 2, 2]).label, vote(probs, 0, rule="soft").label)
    alone = vote(probs, 0, rule="weighted", weights=[0, 1, 0])
    assert np.array_equal(alone.label, probs[1].argmax(axis=1))


def test_caruana_picks_the_member_that_is_right_and_log_loss_weights_agree():
    y = np.array([DOG] * 20)
    right, wrong = np.tile([0.2, 0.7, 0.1], (20, 1)), np.tile([0.7, 0.2, 0.1], (20, 1))
    probs = np.stack([wrong, right, wrong])
    assert caruana_weights(probs, y).tolist() == [0.0, 1.0, 0.0]
    assert log_loss_weights(probs, y).argmax() == 1


def independent_members(n_images: int = 600, right: float = 0.8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(members, images, classes) probabilities and labels: three members, each calibrated on its own (right
    `right` of the time at confidence `right`) and wrong on different images, so their mean is under-confident."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n_images)
    probs = np.full((3, n_images, 3), (1 - right) / 2)
    for member in probs:
        top = np.where(rng.random(n_images) < right, y, (y + rng.integers(1, 3, n_images)) % 3)
        member[np.arange(n_images), top] = right
    return probs, y


@pytest.mark.parametrize("rule", ["majority", "soft"])
def test_the_vote_temperature_makes_an_under_confident_mean_mean_what_it_says_and_changes_no_label(rule):
    from quorum.calibration import calibrate, confidence_calibration_error
    from quorum.predict.vote import fit_vote_temperature

    probs, y = independent_members()
    temperature = fit_vote_temperature(probs[:, :300], y[:300], rule)  # fitted on one half, scored on the other
    assert temperature < 0.9  # sharper: the winner's mean probability understates how often the vote is right
    plain, calibrated = (vote(probs[:, 300:], 0, rule=rule, temperature=t) for t in (1.0, temperature))
    np.testing.assert_array_equal(calibrated.label, plain.label)
    np.testing.assert_allclose(calibrated.combined, calibrate(plain.combined, temperature))
    np.testing.assert_allclose(calibrated.confidence, calibrated.combined[np.arange(300), calibrated.label])
    errors = [confidence_calibration_error(r.confidence, r.label == y[300:]) for r in (plain, calibrated)]
    assert errors[1] < errors[0] / 2, errors


def test_one_member_has_no_vote_temperature_of_its_own():
    from quorum.predict.vote import fit_vote_temperature

    probs, y = independent_members()
    assert fit_vote_temperature(probs[:1], y) == 1.0


# --- predict ----------------------------------------------------------------------------------------


def test_predict_calibrates_the_vote_by_the_temperature_fitted_on_validation_and_records_it(images, tiny_models,
                                                                                           tmp_path):
    from quorum.calibration import calibrate
    from quorum.predict.vote import fit_vote_temperature, mean_probability

    models = copy_models(tiny_models, tmp_path / "models")
    truth = [CAT, DOG, FOX, DOG, CAT, FOX, DOG, DOG]
    with_validation(models, images, truth)
    out = tmp_path / "p.csv"
    assert cli("predict", images, "--models-dir", models, "--out", out, "--probs", "--workers", 0,
               "--quiet").exit_code == 0
    probs = member_probs(images, models)  # calibrated by each member's temperature, as predict votes with them
    expected = fit_vote_temperature(probs, np.array(truth))  # the validation images are these same images
    recorded = json.loads(Path(f"{out}.json").read_text())["vote"]["temperature"]
    assert recorded == pytest.approx(expected, abs=1e-4) and abs(recorded - 1) > 0.01
    frame = read_predictions(out)
    mean = mean_probability(probs, np.ones(probs.shape[:2], bool))
    np.testing.assert_allclose(frame[P_COLUMNS].to_numpy(), calibrate(mean, recorded), atol=2e-6)
    assert frame["prediction"].tolist() == [CLASSES[i] for i in vote(probs, 2).label]  # tie-breaker: the MobileNet


def test_soft_prediction_is_the_argmax_of_the_p_columns_written(images, tiny_models, tmp_path):
    out = tmp_path / "soft.csv"
    result = cli("predict", images, "--models-dir", tiny_models, "--out", out, "--vote", "soft", "--probs",
                 "--workers", 0, "--quiet")
    assert result.exit_code == 0, result.output
    frame = read_predictions(out)
    assert frame["prediction"].tolist() == [CLASSES[i] for i in frame[P_COLUMNS].to_numpy().argmax(axis=1)]
    assert np.allclose(frame["confidence"], frame[P_COLUMNS].max(axis=1))
    assert json.loads(Path(f"{out}.json").read_text())["vote"] == {"rule": "soft", "weights": None, "tta": 1,
                                                                      "temperature": 1.0}  # no validation: none


def test_weighted_prediction_is_its_recorded_weights_applied(images, tiny_models, tmp_path):
    models = copy_models(tiny_models, tmp_path / "models")
    with_validation(models, images, [CAT, DOG, FOX, DOG, CAT, FOX, DOG, DOG])
    out = tmp_path / "weighted.csv"
    assert cli("predict", images, "--models-dir", models, "--out", out, "--vote", "weighted", "--workers", 0,
               "--quiet").exit_code == 0
    recorded = json.loads(Path(f"{out}.json").read_text())["vote"]
    assert recorded["rule"] == "weighted" and sum(recorded["weights"].values()) == pytest.approx(1)
    weights = np.array([recorded["weights"][name] for name in sorted(recorded["weights"])])
    probs = member_probs(images, models)
    expected = (np.tensordot(weights, probs, axes=1) / weights.sum()).round(6).argmax(axis=1)
    assert read_predictions(out)["prediction"].tolist() == [CLASSES[i] for i in expected]


def test_weighted_follows_the_only_member_right_on_validation(images, tmp_path, make_model):
    for index, label in enumerate([CAT, DOG, FOX]):  # each always votes its own class
        make_model(tmp_path / "models", f"m{index}", "tinyvgg", 32, constant=label)
    with_validation(tmp_path / "models", images, [FOX] * 8)
    frame = predict(images, select_models(tmp_path / "models"), PredictOptions(rule="weighted", workers=0), quiet=True)
    assert frame.attrs["vote"]["weights"] == {"m0": 0.0, "m1": 0.0, "m2": 1.0}
    assert set(frame["prediction"]) == {"fox"}  # majority would have had a three-way tie


@pytest.mark.parametrize("rule", ["soft", "weighted"])
def test_lazy_with_soft_or_weighted_is_one_error_line_and_no_file(rule, images, tiny_models, tmp_path):
    out = tmp_path / "p.csv"
    result = cli("predict", images, "--models-dir", tiny_models, "--out", out, "--vote", rule, "--lazy")
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [
        (f"Error: --lazy skips members only where they cannot change a majority vote: drop --lazy for --vote {rule}, "
         "or use --vote majority with it")]
    assert not out.exists()


def test_shards_of_two_rules_are_not_merged(images, tiny_models, tmp_path):
    for index, rule in enumerate(["soft", "majority"]):
        assert cli("predict", images, "--models-dir", tiny_models, "--out", tmp_path / f"{index}.csv", "--shard",
                   f"{index}/2", "--vote", rule, "--workers", 0, "--quiet").exit_code == 0
    result = cli("merge", tmp_path / "0.csv", tmp_path / "1.csv", "--out", tmp_path / "all.csv")
    assert result.exit_code != 0
    assert "the vote: --vote soft --tta 1" in result.output and "--vote majority --tta 1" in result.output


# --- test-time augmentation ------------------------------------------------------------------------


def test_tta_1_is_no_tta(images, tiny_models):
    plain, one = (predict(images, select_models(tiny_models), options, quiet=True)
                  for options in (PredictOptions(workers=0), PredictOptions(workers=0, tta=1)))
    pd.testing.assert_frame_equal(plain, one)


def test_tta_2_is_the_mean_over_the_image_and_its_mirror(images, tiny_models, tmp_path):
    mirrored = tmp_path / "mirrored"
    mirrored.mkdir()
    for path in sorted(images.iterdir()):  # PNG only: a JPEG saved again would change its pixels
        if path.suffix == ".png":
            ImageOps.mirror(Image.open(path)).save(mirrored / path.name)
            (tmp_path / "plain").mkdir(exist_ok=True)
            (tmp_path / "plain" / path.name).write_bytes(path.read_bytes())
    both = member_probs(tmp_path / "plain", tiny_models, tta=2)
    mean = (member_probs(tmp_path / "plain", tiny_models) + member_probs(mirrored, tiny_models)) / 2
    # Twice the batch: oneDNN may pick other kernels (and sum in another order) than for each half alone.
    np.testing.assert_allclose(both, mean, atol=1e-4)


# --- report and demo ---------------------------------------------------------------------------------


def test_report_compares_every_rule_and_says_when_the_images_are_too_few(images, tiny_models, tmp_path):
    labelled = tmp_path / "labelled"
    for index, path in enumerate(sorted(images.iterdir())):  # a labelled folder of the same images
        (labelled / CLASSES[index % 3]).mkdir(parents=True, exist_ok=True)
        (labelled / CLASSES[index % 3] / path.name).write_bytes(path.read_bytes())
    result = cli("report", "--models-dir", tiny_models, "--data", labelled, "--out", tmp_path / "r", "--no-timing",
                 "--vote", "soft", "--tta", 2, "--workers", 0)
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "r" / "scores.json").read_text())
    rules = scores["rules"]
    assert list(rules["rules"]) == ["majority", "soft", "weighted"]
    assert rules["images"] == 8 and rules["weights"] == "cross-fitted on these images (5 folds)"  # no val CSVs
    assert rules["advice"].startswith(("majority (the default)", "too few images to tell"))
    assert "Vote rules side by side" in (tmp_path / "r" / "index.html").read_text()


def test_report_tta_runs_the_validation_images_again_or_says_why_it_cannot(images, tiny_models, tmp_path):
    models = copy_models(tiny_models, tmp_path / "models")
    with_validation(models, images, [CAT, DOG, FOX, DOG, CAT, FOX, DOG, DOG])
    result = cli("report", "--models-dir", models, "--out", tmp_path / "r", "--tta", 2, "--no-timing", "--quiet")
    assert result.exit_code != 0 and not (tmp_path / "r").exists()
    lines = result.output.strip().splitlines()  # before it: each member's temperature, fitted now (no calibration)
    assert [line for line in lines if line.startswith("Error")] == lines[-1:] == [
        ("Error: --tta 2 runs the models again on the shared validation split, and its folder is not recorded: give "
         "the labelled images with --data")]
    for model_json in models.glob("*/model.json"):  # what finetune records: the folder the split is of
        model_json.write_text(json.dumps({**json.loads(model_json.read_text()), "split": {"root": str(images)}}))
    result = cli("report", "--models-dir", models, "--out", tmp_path / "r", "--tta", 2, "--no-timing", "--workers", 0)
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "r" / "scores.json").read_text())
    assert scores["source"] == "the shared validation split (8 images, 2 views each)"
    with_tta = member_probs(images, models, tta=2)
    assert scores["models"]["tinyvgg-32"]["accuracy"] == pytest.approx(
        float((with_tta[2].argmax(axis=1) == [CAT, DOG, FOX, DOG, CAT, FOX, DOG, DOG]).mean()))


def test_rules_table_recommends_a_rule_only_when_the_interval_excludes_zero():
    from quorum.report.rules import compare_rules
    from quorum.report.sources import Labelled

    def labelled(n):  # two members weakly wrong (CAT), one surely right (DOG): soft is right, majority wrong
        probs = np.array([[[0.40, 0.35, 0.25]] * n, [[0.40, 0.35, 0.25]] * n, [[0.0, 0.95, 0.05]] * n])
        return Labelled("synthetic", [str(i) for i in range(n)], np.full(n, DOG), probs)

    many = compare_rules(labelled(200), 0, CLASSES)
    assert many["best"] == "soft" and many["interval"][0] > 0
    assert many["advice"].startswith("--vote soft: +100.0 points over majority on 200 images")
    assert many["rules"]["majority"]["accuracy"] == 0 and many["ceiling"] == 1
    mixed = labelled(20)
    mixed.y_true[10:] = CAT  # now majority is right on half, soft on the other half
    assert compare_rules(mixed, 0, CLASSES)["advice"].startswith("majority (the default)")
    few = labelled(10)
    few.y_true[:] = [DOG, DOG, CAT] + [FOX] * 7  # soft right on two, majority on one: one image apart
    assert compare_rules(few, 0, CLASSES)["advice"].startswith("too few images to tell")
