"""Fine-tuning: which parameters train in each phase, the shared split, resume, and the bundle."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from torch import nn

from conftest import assert_same_model
from image_factory import COLOUR_CLASSES, write_good_images, write_labelled_folder
from quorum.models import bundle, weights
from quorum.models.classifier import (
    count_parameters,
    first_trainable_block,
    freeze,
    set_train_mode,
)
from quorum.models.registry import get_backbone
from quorum.train.finetune import finetune
from quorum.train.recipe import Recipe


@pytest.fixture
def labelled(tmp_path) -> Path:
    """Three colour classes of 8 small real images each."""
    return write_labelled_folder(tmp_path / "data")


def tiny_recipe(data: Path, models: Path, **overrides) -> Recipe:
    settings = dict(backbone="tinyvgg", data=str(data), models_dir=str(models), image_size=32, epochs=3,
                    unfreeze_after=1, batch_size=8, workers=0, weights="none", lr=3e-3, finetune_lr=1e-3)
    return Recipe(**{**settings, **overrides})


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vit_b_16", "tinyvgg"])
@pytest.mark.parametrize("train_blocks", [0, 1, 2])
def test_phase_one_trains_only_head_and_last_blocks(name, train_blocks):
    model = weights.build(get_backbone(name), 4, "none")
    freeze(model, train_blocks)
    set_train_mode(model, train_blocks)
    start = len(model.blocks) - train_blocks
    for index, block in enumerate(model.blocks):
        trains = index >= start
        assert all(p.requires_grad == trains for p in block.parameters()), f"block {index}"
        norms = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert all(m.training == trains for m in norms), f"BatchNorm mode of block {index}"
    assert all(p.requires_grad for p in model.head.parameters())
    assert model.head.training


def test_phase_two_trains_everything():
    model = weights.build(get_backbone("resnet18"), 4, "none")
    freeze(model, 0)
    frozen_count = count_parameters(model, trainable_only=True)
    freeze(model, None)
    set_train_mode(model, None)
    assert first_trainable_block(model, None) == 0
    assert count_parameters(model, trainable_only=True) == count_parameters(model) > frozen_count
    assert all(m.training for m in model.modules())


def test_finetune_writes_a_complete_bundle(labelled, tmp_path):
    model_dir = finetune(tiny_recipe(labelled, tmp_path / "models"), quiet=True)
    assert model_dir == tmp_path / "models" / "tinyvgg-32"
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "features.npz", "history.csv", "model.json", "model.onnx", "model.safetensors", "val_predictions.csv"]
    info = json.loads((model_dir / "model.json").read_text())
    assert info["classes"] == ["blue", "green", "red"]
    assert info["image_size"] == 32 and info["backbone"] == "tinyvgg"
    assert set(info["metrics"]) >= {"accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion_matrix"}
    assert info["recipe"]["unfreeze_after"] == 1 and info["split"]["val_images"] == 6
    history = pd.read_csv(model_dir / "history.csv")
    assert list(history.phase) == [1, 2, 2]
    assert history.trainable_params[0] < history.trainable_params[1]
    val = pd.read_csv(model_dir / "val_predictions.csv")
    assert list(val.columns) == ["path", "true_label", "predicted_label", "p_blue", "p_green", "p_red"]
    assert (val[["p_blue", "p_green", "p_red"]].sum(axis=1) - 1).abs().max() < 1e-4
    # The saved accuracy is the best epoch's, and agrees with the saved predictions.
    assert info["metrics"]["accuracy"] == pytest.approx((val.true_label == val.predicted_label).mean())
    assert info["metrics"]["accuracy"] == pytest.approx(history.val_accuracy.max())
    model, loaded = bundle.load_model(model_dir)
    assert loaded.classes == ("blue", "green", "red") and not model.training
    # The kept model's features of its training and validation images, for predict's unknown score.
    features = np.load(model_dir / "features.npz")
    split = pd.read_csv(tmp_path / "models" / "split.csv")
    assert sorted(features["val_paths"]) == sorted(val.path)
    width = model.head[-1].in_features
    assert features["train"].shape == ((split.subset == "train").sum(), width) and features["val"].shape == (6, width)
    assert str(features["weights_sha256"]) == hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert not list((tmp_path / "models").glob(".*")), "no partial or temporary files are left"


def test_models_share_one_split(labelled, tmp_path, capsys):
    models = tmp_path / "models"
    first = finetune(tiny_recipe(labelled, models, epochs=1), quiet=True)
    second = finetune(tiny_recipe(labelled, models, epochs=1, image_size=40, val_fraction=0.5, seed=7), quiet=True)
    splits = [json.loads((d / "model.json").read_text())["split"] for d in (first, second)]
    assert len({split["digest"] for split in splits}) == 1
    # Both record the values the shared split was drawn with, and the second run says it did not get its own.
    assert [(split["val_fraction"], split["seed"]) for split in splits] == [(0.2, 0), (0.2, 0)]
    said = " ".join(capsys.readouterr().err.split())
    assert ("The split reused was drawn with --val-fraction 0.2 --seed 0, not the --val-fraction 0.5 --seed 7 given "
            "(model.json records the split's): add --resplit") in said
    paths = [set(pd.read_csv(d / "val_predictions.csv").path) for d in (first, second)]
    assert paths[0] == paths[1] and len(paths[0]) == 6
    split = pd.read_csv(models / "split.csv")
    assert (split[split.subset == "val"].label.value_counts() == 2).all(), "stratified: 2 of 8 per class"


def test_given_train_and_val_folders_are_used_as_is(tmp_path):
    root = tmp_path / "data"
    for seed, (name, tint) in enumerate(list(COLOUR_CLASSES.items())[:2]):
        write_good_images(root / "train" / name, 6, tint=tint, seed=seed)
        write_good_images(root / "val" / name, 2, tint=tint, seed=seed + 10)
    model_dir = finetune(tiny_recipe(root, tmp_path / "models", epochs=1), quiet=True)
    val_paths = pd.read_csv(model_dir / "val_predictions.csv").path
    assert len(val_paths) == 4 and val_paths.str.startswith("val/").all()


def test_unreadable_training_images_are_left_out(labelled, tmp_path):
    (labelled / "red" / "broken.png").write_bytes(b"not a png")
    (labelled / "green" / "empty.jpg").write_bytes(b"")
    model_dir = finetune(tiny_recipe(labelled, tmp_path / "models", epochs=1), quiet=True)
    split = pd.read_csv(tmp_path / "models" / "split.csv", keep_default_na=False)
    unreadable = split[split.subset == "unreadable"]
    assert sorted(unreadable.path) == ["green/empty.jpg", "red/broken.png"]
    assert set(unreadable.reason) == {"empty file", "not an image (cannot identify image file)"}
    assert not pd.read_csv(model_dir / "val_predictions.csv").path.isin(unreadable.path).any()


def test_resume_gives_the_same_model_as_an_uninterrupted_run(labelled, tmp_path):
    whole = finetune(tiny_recipe(labelled, tmp_path / "a", epochs=4, unfreeze_after=2), quiet=True)

    def interrupt_after_third_epoch(epoch: int) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    recipe = tiny_recipe(labelled, tmp_path / "b", epochs=4, unfreeze_after=2)
    with pytest.raises(KeyboardInterrupt):
        finetune(recipe, quiet=True, on_epoch_end=interrupt_after_third_epoch)
    assert not (tmp_path / "b" / "tinyvgg-32").exists(), "an interrupted run leaves no model folder"
    resumed = finetune(recipe, resume=True, quiet=True)

    assert_same_model(resumed, whole)


SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "tf_efficientnet_lite0.safetensors"


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_WEIGHTS.is_file(), reason=f"offline pretrained weights not found at {SHARED_WEIGHTS}")
def test_real_pretraining_clearly_beats_random_init(tmp_path):
    """EfficientNet-Lite0's ImageNet features on Fashion-MNIST, head only, against random features."""
    pytest.importorskip("timm")
    data = Path(__file__).resolve().parents[1] / "sample_data" / "labelled"
    common = dict(backbone="timm/tf_efficientnet_lite0", data=str(data), models_dir=str(tmp_path / "models"),
                  image_size=64, epochs=5, unfreeze_after=5, workers=0, seed=0)
    pretrained = finetune(Recipe(**common, weights=str(SHARED_WEIGHTS), name="pretrained"), quiet=True)
    scratch = finetune(Recipe(**common, weights="none", name="scratch"), quiet=True)
    accuracy = {d.name: json.loads((d / "model.json").read_text())["metrics"]["accuracy"]
                for d in (pretrained, scratch)}
    assert accuracy["pretrained"] >= 0.6, accuracy
    assert accuracy["pretrained"] >= accuracy["scratch"] + 0.2, accuracy
