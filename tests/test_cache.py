"""Phase 1 from cached features trains the same parameters as the plain loop, about as well."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from image_factory import write_labelled_folder
from quorum.models import weights
from quorum.models.registry import get_backbone
from quorum.train.finetune import finetune
from quorum.train.recipe import Recipe

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "labelled"
SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "tf_efficientnet_lite0.safetensors"


def run(tmp_path: Path, name: str, data: Path = SAMPLE, quiet: bool = True, **settings) -> Path:
    recipe = Recipe(data=str(data), models_dir=str(tmp_path / "models"), name=name, workers=0, **settings)
    return finetune(recipe, quiet=quiet)


@pytest.mark.parametrize("train_blocks", [0, 1])
def test_cached_and_plain_phase_one_change_the_same_parameters(tmp_path, train_blocks):
    settings = dict(backbone="resnet18", weights="none", image_size=32, epochs=2, unfreeze_after=2,
                    train_blocks=train_blocks, data=write_labelled_folder(tmp_path / "data"))
    cached = load_file(str(run(tmp_path, "cached", **settings) / "model.safetensors"))
    plain = load_file(str(run(tmp_path, "plain", cache_features=False, **settings) / "model.safetensors"))
    torch.manual_seed(0)  # finetune seeds the same way before building, so this is the starting point
    start = weights.build(get_backbone("resnet18"), 3, "none").state_dict()
    frozen_prefixes = [f"blocks.{i}." for i in range(5 - train_blocks)]
    for key, initial in start.items():
        frozen = key.startswith(tuple(frozen_prefixes))
        for result in (cached, plain):
            # Frozen blocks keep their weights *and* BatchNorm statistics; the rest moves.
            assert torch.equal(result[key], initial) == frozen or initial.dtype == torch.long, key


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_WEIGHTS.is_file(), reason=f"offline pretrained weights not found at {SHARED_WEIGHTS}")
def test_cached_phase_one_is_about_as_accurate_as_plain(tmp_path):
    pytest.importorskip("timm")
    settings = dict(backbone="timm/tf_efficientnet_lite0", weights=str(SHARED_WEIGHTS), image_size=64, epochs=4,
                    unfreeze_after=4)
    accuracy = {}
    for name, use_cache in (("cached", True), ("plain", False)):
        model_dir = run(tmp_path, name, cache_features=use_cache, **settings)
        accuracy[name] = json.loads((model_dir / "model.json").read_text())["metrics"]["accuracy"]
        history = pd.read_csv(model_dir / "history.csv")
        assert (history.trainable_params == 12_810).all(), "head only: 1280 features x 10 classes + bias"
    assert accuracy["cached"] >= 0.6 and abs(accuracy["cached"] - accuracy["plain"]) <= 0.1, accuracy


def test_cache_too_big_for_memory_falls_back_to_the_plain_loop(tmp_path, monkeypatch, capsys):
    from quorum.train import cache

    monkeypatch.setattr(cache, "MEMORY_SHARE", 1e-9)  # any cache is then too big
    model_dir = run(tmp_path, "fallback", data=write_labelled_folder(tmp_path / "data"), backbone="tinyvgg",
                    weights="none", image_size=32, epochs=1, unfreeze_after=1, quiet=False)
    assert "Feature cache would need" in capsys.readouterr().err
    assert json.loads((model_dir / "model.json").read_text())["recipe"]["cache_features"] is False
