"""A file that decodes but fails its transform: dropped from its batch with a word, never a crash; and
training's loaders pin memory only for a GPU."""

from __future__ import annotations

import pytest
import torch
from torchvision import transforms as T

from image_factory import write_good_images, write_labelled_folder
from quorum import distributed
from quorum.data.datasets import LabelledImages, make_loader
from quorum.data.preprocess import Preprocessing
from quorum.data.split import load_or_make_split
from quorum.models import weights
from quorum.models.registry import get_backbone
from quorum.predict.pipeline import _Images
from quorum.train.recipe import Recipe
from quorum.train.run import TrainingRun

# A real torchvision transform that a real image can fail: RandomCrop without padding refuses
# images smaller than the crop.
CROP_40 = T.Compose([T.RandomCrop(40), T.PILToTensor()])


@pytest.fixture
def folder(tmp_path):
    write_good_images(tmp_path, 3, size=(64, 48))
    write_good_images(tmp_path, 1, size=(30, 20), seed=1)  # good_01_000.png: decodes, cannot be cropped to 40
    return tmp_path


def test_training_drops_an_image_its_transform_refuses_and_says_so(folder, capsys):
    items = [(path.name, 0) for path in sorted(folder.glob("*.*"))]
    loader = make_loader(LabelledImages(folder, items, CROP_40), batch_size=4, shuffle=False, workers=0)
    [batch] = list(loader)
    assert batch[0].shape == (3, 3, 40, 40) and batch[2].tolist() == [0, 1, 2]
    said = " ".join(capsys.readouterr().err.split())
    assert "[yellow]" not in said
    assert "left out good_01_000.png: cannot preprocess (ValueError: Required crop size (40, 40) is larger" in said


class _Crop40(Preprocessing):
    def eval_pixels(self):
        return CROP_40


def test_predict_gives_an_image_its_transform_refuses_an_error_row(folder):
    paths = sorted(folder.glob("*.*"))
    images = _Images(paths, [_Crop40(size=40, mean=(0.5,) * 3, std=(0.5,) * 3)])
    index, pixels, reason, _ = images[paths.index(folder / "good_01_000.png")]
    assert pixels is None
    assert reason.startswith("cannot preprocess (ValueError: "
                             "Required crop size (40, 40) is larger than input image size")
    assert images[0][2] is None and images[0][1][(40, 0.875, "bilinear")].shape == (3, 40, 40)


def test_training_augmentation_resizes_with_the_models_interpolation():
    # Issue 23 item 4: evaluation resized with the model's interpolation, training always bilinearly.
    import numpy as np
    import torch
    from PIL import Image

    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 80, 3), dtype=np.uint8))

    def augmented(interpolation):
        torch.manual_seed(0)  # the same crop, flip and angle for both
        return Preprocessing(32, (0.5,) * 3, (0.5,) * 3, interpolation=interpolation).train_pixels()(noise)

    assert not torch.equal(augmented("bicubic"), augmented("bilinear"))
    assert not torch.equal(augmented("nearest"), augmented("bilinear"))


def test_batches_are_pinned_only_for_a_cuda_device(tmp_path):
    """Pinned memory is a page-locked copy for the host-to-GPU transfer: for --device cpu, a cost for nothing."""
    data = write_labelled_folder(tmp_path / "data")
    split, _ = load_or_make_split(data, tmp_path / "models", 0.25, 0)
    recipe = Recipe(backbone="tinyvgg", data=str(data), image_size=32, workers=0).resolve(64, False)
    run = TrainingRun(recipe, split, weights.build(get_backbone("tinyvgg"), 3, "none"), torch.device("cpu"),
                      tmp_path / "work", distributed.World(), quiet=True)
    _, train, val = run.loaders(0, 2)
    assert (train.pin_memory, val.pin_memory) == (False, False)
