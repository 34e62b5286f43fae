"""Shared fixtures: tiny real models saved as quorum bundles, fast enough to build per session."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from quorum.models import bundle, weights
from quorum.models.registry import get_backbone

CLASSES = ("cat", "dog", "fox")


def save_model(models_dir: Path, name: str, backbone: str, image_size: int, classes=CLASSES, accuracy: float = 0.5,
               seed: int = 0, constant: int | None = None) -> Path:
    """A random-init `backbone` saved as models_dir/name; `constant` = k makes it always vote class k.

    The same `seed` and backbone give identical weights, so two such models always agree.
    """
    torch.manual_seed(seed)
    entry = get_backbone(backbone)
    model = weights.build(entry, len(classes), "none").eval()
    if constant is not None:  # zero weights and a one-hot bias: the same logits for every image
        linear = model.head[-1]
        torch.nn.init.zeros_(linear.weight)
        with torch.no_grad():
            linear.bias.copy_(torch.arange(len(classes)) == constant).mul_(3.0)
    model_dir = Path(models_dir) / name
    model_dir.mkdir(parents=True)
    bundle.save_weights(model, model_dir)
    bundle.write_model_json(model_dir, {
        "name": name, "backbone": backbone, **entry.preprocessing(image_size).as_dict(),
        "classes": list(classes), "metrics": {"accuracy": accuracy},
    })
    return model_dir


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """Three members over CLASSES: two identical tinyvgg-32 (they always agree) and a mobilenet_v3_small-40.

    Two input sizes and two mean/std pairs; the MobileNet has the best accuracy, so it breaks ties,
    and it costs the most, so it runs last.
    """
    root = tmp_path_factory.mktemp("tiny_models")
    save_model(root, "tinyvgg-32", "tinyvgg", 32, accuracy=0.7)
    save_model(root, "tinyvgg-32-copy", "tinyvgg", 32, accuracy=0.6)
    save_model(root, "mobilenet_v3_small-40", "mobilenet_v3_small", 40, accuracy=0.9, seed=1)
    return root


@pytest.fixture
def training_sets(monkeypatch) -> dict:
    """Filled by the next TrainingRun made (the real constructor, only watched): "train" maps each training
    item's path to its target, "val" lists the validation paths."""
    from quorum.train import run as run_module

    seen = {}
    original = run_module.TrainingRun.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen["train"] = dict(self.train_set.items)
        seen["val"] = [path for path, _ in self.val_set.items]

    monkeypatch.setattr(run_module.TrainingRun, "__init__", spy)
    return seen


@pytest.fixture
def make_model():
    """`save_model`, for tests that need models of their own."""
    return save_model


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP's spinning makes them 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_same_model(actual_dir, expected_dir) -> None:
    expected, actual = (load_file(str(d / "model.safetensors")) for d in (expected_dir, actual_dir))
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
    columns = ["epoch", "phase", "lr", "train_loss", "val_loss", "val_accuracy"]
    pd.testing.assert_frame_equal(pd.read_csv(actual_dir / "history.csv")[columns],
                                  pd.read_csv(expected_dir / "history.csv")[columns], rtol=1e-5)
