"""Images of no known class: the `unknown` flag on real images of another kind (scikit-learn's handwritten
digits and crops of its photos) in a folder of Fashion-MNIST classes, the line set on validation, the
review folder, the pseudo-label exclusion, shards, and the errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy.stats import entropy

from quorum.calibration import calibrate
from quorum.cli import main
from quorum.models.bundle import read_info
from quorum.models.temperature import temperature
from quorum.predict import shards
from quorum.predict.members import select_models
from quorum.predict.options import PredictOptions, Shard
from quorum.predict.pipeline import predict
from quorum.predict.table import closing_lines, read_predictions, write_predictions
from quorum.train.finetune import finetune
from quorum.train.recipe import Recipe

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py
SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"
CLASSES = ("Bag", "Sneaker", "Trouser")  # three of the sample's Fashion-MNIST classes


def cli(*args):
    result = CliRunner().invoke(main, [*map(str, args)])
    assert "Traceback" not in result.output, result.output
    return result


def write_other_kind(folder: Path, count: int) -> None:
    """`count` handwritten digits and `count` photo crops, 28x28 grayscale as Fashion-MNIST: real images
    of no class the models know."""
    from sklearn.datasets import load_digits, load_sample_images

    folder.mkdir(parents=True, exist_ok=True)
    for n, digit in enumerate(load_digits().images[:count]):  # drawn in the middle 20 px, as MNIST centres its digits
        canvas = Image.new("L", (28, 28))
        canvas.paste(Image.fromarray((digit * 255 / 16).astype(np.uint8), "L").resize((20, 20)), (4, 4))
        canvas.save(folder / f"digit_{n}.png")
    photos = [Image.fromarray(image).convert("L") for image in load_sample_images().images]
    for n in range(count):
        left, top = 40 * n, 30 * (n % 5)
        crop = photos[n % 2].crop((left, top, left + 120, top + 120)).resize((28, 28))
        crop.save(folder / f"photo_{n}.png")


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread):
    """Two members fine-tuned on three sample classes (30 images each; the shared split keeps 18 for
    validation) and an unlabelled folder: 30 images of those classes, 8 digits and 8 photo crops."""
    root = tmp_path_factory.mktemp("unknown")
    for name in CLASSES:
        shutil.copytree(SAMPLE / "labelled" / name, root / "labelled" / name)
    labels = pd.read_csv(SAMPLE / "unlabelled_labels.csv")
    unlabelled = root / "unlabelled"
    unlabelled.mkdir()
    for name in CLASSES:
        for path in labels.loc[labels["label"] == name, "path"][:10]:
            shutil.copy(SAMPLE / "unlabelled" / path, unlabelled / f"in_{path}")
    write_other_kind(unlabelled, 8)
    for seed in range(2):
        finetune(Recipe(backbone="tinyvgg", data=str(root / "labelled"), models_dir=str(root / "models"), image_size=32,
                        epochs=6, unfreeze_after=0, batch_size=16, workers=0, weights="none", lr=3e-3, name=f"m{seed}",
                        seed=seed), quiet=True)
    return root


@pytest.fixture
def predicted(world, tmp_path) -> Path:
    out = tmp_path / "preds.csv"
    result = cli("predict", world / "unlabelled", "--out", out, "--models-dir", world / "models", "--workers", 0)
    assert result.exit_code == 0, result.output
    return out


def kind(frame: pd.DataFrame) -> pd.Series:
    return frame["path"].str.split("_").str[0]  # in, digit or photo


def distance_scores(member: Path, features: np.ndarray) -> np.ndarray:
    """The member's score of `features`, straight from its features.npz through cleanlab: the mean cosine
    distance to the k nearest training images, scaled by the training images' median, as 1 - exp(-d)."""
    from cleanlab.outlier import OutOfDistribution

    train = np.load(member / "features.npz")["train"].astype(np.float32)
    detector = OutOfDistribution({"k": min(10, len(train) - 1)})
    detector.fit(features=train, verbose=False)
    return 1 - detector.score(features=features)


def validation_scores_by_hand(world: Path) -> np.ndarray:
    """The members' mean score of each validation image (in path order), from their features.npz."""
    scores = []
    for member in [world / "models" / name for name in ("m0", "m1")]:
        stored = np.load(member / "features.npz")
        order = np.argsort(stored["val_paths"])
        scores.append(distance_scores(member, stored["val"].astype(np.float32)[order]))
    return np.mean(scores, axis=0)


def test_the_line_is_set_on_validation_and_flags_the_digits(predicted, world):
    frame = read_predictions(predicted)
    recorded = json.loads(predicted.with_name("preds.csv.json").read_text())["unknown"]
    assert recorded["score"] == "distance to the nearest training images in the members' features"
    scores = validation_scores_by_hand(world)
    assert recorded["keep"] == 0.95 and recorded["validation_images"] == len(scores) == 18
    assert recorded["threshold"] == pytest.approx(np.quantile(scores, 0.95, method="inverted_cdf"), abs=1e-5)
    assert (scores <= recorded["threshold"]).mean() >= 0.95
    assert frame["unknown_score"].notna().all()
    assert frame["unknown"].tolist() == (frame["unknown_score"] > recorded["threshold"]).tolist()
    flagged = frame.groupby(kind(frame))["unknown"].mean()
    # Real images of another kind, by two tiny members trained from scratch: most digits and photos are
    # flagged, few of the known classes (benchmarks/bench_unknown.py measures pretrained members).
    assert flagged["digit"] >= 0.75 and flagged["photo"] >= 0.75 and flagged["in"] <= 0.2, flagged


def test_the_score_is_each_members_distance_on_both_engines(world, predicted):
    """The row's score is the mean of the members' distances, whichever engine ran them: torch's features
    and the ONNX graph's second output give the same scores."""
    import torch

    from quorum.models.bundle import load_model
    from quorum.models.inference import TorchInference

    models = select_models(world / "models")
    onnx = predict(world / "unlabelled", models, PredictOptions(workers=0, engine="onnx"), quiet=True)
    on_torch = predict(world / "unlabelled", models, PredictOptions(workers=0, engine="torch"), quiet=True)
    np.testing.assert_allclose(onnx["unknown_score"], on_torch["unknown_score"], atol=1e-4)
    assert onnx["unknown"].tolist() == on_torch["unknown"].tolist()
    # By hand, member by member, in torch: the same pixels predict feeds, the features the head reads.
    paths = sorted((world / "unlabelled").iterdir())
    by_hand = []
    for member in models:
        model, info = load_model(member)
        pixels = torch.stack([info.preprocessing.eval_pixels()(Image.open(path).convert("RGB")) for path in paths])
        features = TorchInference(model, info.preprocessing, torch.device("cpu")).with_features(pixels)[1]
        by_hand.append(distance_scores(member, features))
    expected = dict(zip([path.name for path in paths], np.mean(by_hand, axis=0)))
    np.testing.assert_allclose(on_torch["unknown_score"], [expected[path] for path in on_torch["path"]], atol=1e-4)


def test_tta_scores_each_image_by_its_views_mean_features(world, predicted):
    models = select_models(world / "models")
    frame = predict(world / "unlabelled", models, PredictOptions(workers=0, tta=3), quiet=True)
    scores = frame["unknown_score"].to_numpy()
    assert np.isfinite(scores).all() and ((scores >= 0) & (scores < 1)).all()
    one_view = read_predictions(predicted).set_index("path").loc[frame["path"], "unknown_score"].to_numpy()
    assert not np.allclose(scores, one_view)  # the views' features moved the score...
    assert np.corrcoef(scores, one_view)[0, 1] > 0.8  # ...but not the order of things


def test_members_without_stored_features_fall_back_to_entropy(world, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(world / "models", models)
    (models / "m1" / "features.npz").unlink()
    out = tmp_path / "preds.csv"
    result = cli("predict", world / "unlabelled", "--out", out, "--models-dir", models, "--workers", 0)
    assert result.exit_code == 0, result.output
    recorded = json.loads(out.with_name("preds.csv.json").read_text())["unknown"]
    assert recorded["score"] == "entropy of the members' mean probability"
    assert recorded["reason"].startswith("no training features in m1 (fine-tuned before quorum stored them")
    said = " ".join(result.stderr.split())
    assert "unknown_score is the entropy of the members' mean probability: no training features in m1" in said
    frame = read_predictions(out)
    vals = [pd.read_csv(models / name / "val_predictions.csv").sort_values("path") for name in ("m0", "m1")]
    mean = np.mean([calibrate(val[[f"p_{name}" for name in CLASSES]].to_numpy(), temperature(read_info(models / m)))
                    for val, m in zip(vals, ("m0", "m1"))], axis=0)
    scores = entropy(mean, axis=1)  # of the members' mean calibrated probability, image by image
    assert recorded["threshold"] == pytest.approx(np.quantile(scores, 0.95, method="inverted_cdf"))
    assert frame["unknown"].tolist() == (frame["unknown_score"] > recorded["threshold"]).tolist()


def test_features_of_other_validation_images_fall_back_to_entropy_and_say_why(world, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(world / "models", models)
    with np.load(models / "m1" / "features.npz") as stored:
        arrays = dict(stored)
    arrays["val_paths"] = np.array([f"elsewhere/{path}" for path in arrays["val_paths"]])  # e.g. copied in by hand
    np.savez(models / "m1" / "features.npz", **arrays)
    out = tmp_path / "preds.csv"
    result = cli("predict", world / "unlabelled", "--out", out, "--models-dir", models, "--workers", 0)
    assert result.exit_code == 0, result.output  # was: Error: a member's features.npz lists other validation images
    recorded = json.loads(out.with_name("preds.csv.json").read_text())["unknown"]
    assert recorded["score"] == "entropy of the members' mean probability"
    assert recorded["reason"] == ("m1's features.npz lists other validation images than its val_predictions.csv "
                                  "(fine-tune it again for the distance score)")


def test_flagged_rows_are_left_out_of_the_trusted_lines(predicted):
    frame = read_predictions(predicted)
    frame.attrs["unknown"] = json.loads(predicted.with_name("preds.csv.json").read_text())["unknown"]
    lines = closing_lines(frame)
    flagged = int(frame["unknown"].sum())
    assert lines[1].startswith(f"no known class: {flagged} of {len(frame)} rows flagged unknown")
    kept = frame[~frame["unknown"]]
    unanimous = int((kept["decided_by"] == "unanimous").sum())
    assert lines[3].startswith(f"decided: {unanimous} unanimous, 0 majority, {len(kept) - unanimous} tie-breaker")


def test_the_trust_lines_leave_out_the_validation_images_above_the_line(world):
    """predict leaves flagged rows out of its trusted lines; the validation line they are read against
    leaves out the validation images above the same line, so both describe rows the flag passes."""
    from quorum.predict.members import read_members
    from quorum.predict.unknown import load_neighbours, threshold
    from quorum.report.validation_trust import validation_trust

    models = select_models(world / "models")
    scores, paths = validation_scores_by_hand(world), sorted(pd.read_csv(models[0] / "val_predictions.csv").path)
    # What predict hands the trust lines: the validation images at or under its line, by hand.
    line = threshold(read_members(models), 0.7, neighbours=load_neighbours(read_members(models))[0])
    assert line.value == pytest.approx(float(np.sort(scores)[12]), abs=1e-5)  # as --unknown-keep 0.7 draws it
    assert line.passed == {path for path, score in zip(paths, scores) if score <= line.value}
    frame = predict(world / "unlabelled", models, PredictOptions(workers=0, unknown_keep=0.7), quiet=True)
    assert frame.attrs["unknown_passed"] == line.passed
    above = 18 - len(line.passed)
    assert above == 5

    def images(table: pd.DataFrame) -> int:
        return int(table.loc[table["group"] == "decided_by", "images"].sum())

    assert images(validation_trust(models)) == 18
    assert images(validation_trust(models, None, line.passed)) == 18 - above
    assert images(validation_trust(models, None, None)) == 18


def test_review_puts_the_flagged_rows_in_unknown(predicted, tmp_path):
    frame = read_predictions(predicted)
    out = tmp_path / "review"
    result = cli("review", predicted, "--out", out)
    assert result.exit_code == 0, result.output
    flagged = frame.loc[frame["unknown"], "path"]
    assert sorted(p.name for p in (out / "_unknown").iterdir()) == sorted(flagged)
    split = frame[~frame["unknown"] & (frame["decided_by"] != "unanimous")]  # the members differ, not flagged
    in_classes = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png") if p.parent.name != "_unknown")
    assert in_classes == sorted(f"{label}/{path}" for path, label in zip(split["path"], split["prediction"]))
    assert f"{len(flagged)} of them are flagged unknown" in result.stderr
    assert "_unknown/ holds the" in (out / "README.txt").read_text()


def test_pseudo_labels_leave_the_flagged_rows_out(predicted, world, tmp_path):
    frame = read_predictions(predicted)
    models = tmp_path / "models"
    shutil.copytree(world / "models", models)
    recipe = Recipe(backbone="tinyvgg", data=str(world / "labelled"), models_dir=str(models), image_size=32,
                    epochs=1, unfreeze_after=0, batch_size=16, workers=0, weights="none", name="pseudo",
                    pseudo_labels=str(predicted))
    info = json.loads((finetune(recipe, quiet=True) / "model.json").read_text())["pseudo_labels"]
    unanimous = frame["agreement"] == 1  # --pseudo-min-agreement's default
    assert info["left_out_unknown"] == int((frame["unknown"] & unanimous).sum()) > 0
    assert info["added"] == int((~frame["unknown"] & unanimous).sum())


def test_shards_merge_into_the_whole_runs_flags(world, tmp_path):
    models = select_models(world / "models")
    whole = predict(world / "unlabelled", models, PredictOptions(workers=0), quiet=True)
    parts = []
    for index in range(2):
        part = predict(world / "unlabelled", models, PredictOptions(workers=0, shard=Shard(index, 2)), quiet=True)
        parts.append(tmp_path / f"part{index}.csv")
        write_predictions(part, parts[-1])
    merged = shards.merge(parts)
    pd.testing.assert_frame_equal(merged[["path", "unknown_score", "unknown"]],
                                  whole[["path", "unknown_score", "unknown"]],
                                  atol=1e-6)
    assert merged.attrs["unknown"] == whole.attrs["unknown"]


def test_a_member_without_validation_predictions(world, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(world / "models", models)
    (models / "m1" / "val_predictions.csv").unlink()
    out = tmp_path / "preds.csv"
    result = cli("predict", world / "unlabelled", "--out", out, "--models-dir", models, "--workers", 0,
                 "--unknown-keep", 0.9)
    assert result.exit_code == 1 and not out.exists()
    assert result.output == (f"Error: --unknown-keep needs the members' validation predictions: {models / 'm1'} has no "
                              "val_predictions.csv: fine-tune it again with quorum finetune\n")
    # Not asked for: the rows are written, the flag is left empty and the summary says why.
    result = cli("predict", world / "unlabelled", "--out", out, "--models-dir", models, "--workers", 0)
    assert result.exit_code == 0, result.output
    assert read_predictions(out)["unknown"].isna().all()
    assert "no known class: none flagged" in " ".join(result.stderr.split())


@pytest.mark.parametrize("value", ["0", "1.5", "-1"])
def test_unknown_keep_out_of_range_is_one_error_line(world, tmp_path, value):
    out = tmp_path / "preds.csv"
    result = cli("predict", world / "unlabelled", "--out", out, "--models-dir", world / "models",
                 "--unknown-keep", value)
    assert result.exit_code == 2 and not out.exists()
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: Invalid value for '--unknown-keep'") and "0<x<=1" in lines[-1]


def test_the_folder_check_warns_when_the_folder_is_unlike_the_labelled_one(world, tmp_path):
    from quorum.predict.folder_check import compare

    models = select_models(world / "models")
    alike = tmp_path / "alike"
    for name in CLASSES:  # unlabelled images of the labelled classes, in the labelled mix
        shutil.copytree(SAMPLE / "labelled" / name, alike / name)
    frame = predict(alike, models, PredictOptions(workers=0, flag_unknown=False), quiet=True)
    lines = compare(frame, alike, world / "labelled")
    assert "28x28 px, L 100%, PNG 100%" in lines[1] and not any(line.startswith("Warning") for line in lines)
    # Colour photos of another size, as JPEG: size, aspect and mode differ.
    from sklearn.datasets import load_sample_images

    photos = tmp_path / "photos"
    photos.mkdir()
    for n, image in enumerate(load_sample_images().images):
        Image.fromarray(image).crop((0, 0, 400, 300)).save(photos / f"{n}.jpg")
    frame = predict(photos, models, PredictOptions(workers=0), quiet=True)
    warning = compare(frame, photos, world / "labelled")[-1]
    assert warning.startswith("Warning: this folder is not like the labelled one (")
    assert "size 400x300 vs 28x28" in warning and "aspect 1.33 vs 1.00" in warning and "mode RGB vs L" in warning


def test_the_folder_check_has_no_class_mix_without_a_readable_row(world, tmp_path):
    """A folder of only unreadable files: the class mix of no row read as 0.50 from the labelled one, and warned."""
    from quorum.predict.folder_check import compare

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "empty.png").write_bytes(b"")
    (broken / "notes.jpg").write_text("not pixels")
    frame = predict(broken, select_models(world / "models"), PredictOptions(workers=0), quiet=True)
    lines = compare(frame, broken, world / "labelled")
    assert lines[0].endswith("no class mix (no readable row that is not flagged unknown)")
    assert not any(line.startswith("Warning") for line in lines)


def test_resume_keeps_the_flags_and_refuses_another_line(world, predicted, tmp_path):
    out, progress = tmp_path / "resumed.csv", tmp_path / "resumed.csv.partial"
    models = select_models(world / "models")
    predict(world / "unlabelled", models, PredictOptions(workers=0, batch_size=8), quiet=True, progress=progress)
    rows = progress / "rows-0.jsonl"
    rows.write_text("".join(rows.read_text().splitlines(keepends=True)[:20]))  # as if stopped after 20 rows
    result = cli("predict", world / "unlabelled", "--out", out, "--models-dir", world / "models", "--workers", 0,
                 "--resume", "--unknown-keep", 0.8)
    assert result.exit_code == 1 and "it is from another run (the unknown line (--unknown-keep)" in result.output
    result = cli("predict", world / "unlabelled", "--out", out, "--models-dir", world / "models", "--workers", 0,
                 "--resume")
    assert result.exit_code == 0 and "20 rows were finished before" in result.output
    resumed, whole = read_predictions(out), read_predictions(predicted)
    pd.testing.assert_frame_equal(resumed[["path", "unknown_score", "unknown"]],
                                  whole[["path", "unknown_score", "unknown"]],
                                  atol=1e-6)


def test_the_report_shows_the_folder_check_and_the_flagged_rows(world, predicted, tmp_path):
    out = tmp_path / "report"
    result = cli("report", "--models-dir", world / "models", "--preds", predicted, "--out", out, "--no-timing", "-q")
    assert result.exit_code == 0, result.output
    page = (out / "index.html").read_text()
    assert "Is this folder like the labelled one?" in page and "class mix distance" in page
    assert "Warning: this folder is not like the labelled one" in page  # 28% flagged unknown here
    assert "flagged unknown (no known class)" in page  # the flagged rows' own gallery group
