"""Eval pixels are the ones each backbone was pretrained on: torchvision's `weights.transforms()` and
timm's `create_transform` from the pretrained config, on a real photo."""

from __future__ import annotations

import pytest
import torch
import torchvision.models as tvm
from PIL import Image
from sklearn.datasets import load_sample_image
from torchvision import transforms as T

from quorum.models.registry import BACKBONES, get_backbone


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(load_sample_image("china.jpg"))  # 640 x 427, shipped with scikit-learn


def quorum_input(backbone, size: int, image: Image.Image) -> torch.Tensor:
    preprocessing = backbone.preprocessing(size)
    return preprocessing.normalizer()(preprocessing.eval_pixels()(image)[None])[0]


@pytest.mark.parametrize("name", [name for name, backbone in BACKBONES.items() if backbone.pretrained_available])
def test_eval_pixels_are_the_torchvision_weights_own(name, photo):
    backbone = BACKBONES[name]
    theirs = tvm.get_model_weights(name).DEFAULT.transforms()(photo)  # e.g. ResNet50: resize 232, crop 224
    torch.testing.assert_close(quorum_input(backbone, backbone.native_size, photo), theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [224, 96])  # 96 / 0.875 = 109.7: timm floors it
def test_eval_pixels_are_timms_own(size, photo):
    timm_data = pytest.importorskip("timm.data")
    import timm

    config = timm_data.resolve_data_config({"input_size": (3, size, size)},
                                           pretrained_cfg=timm.get_pretrained_cfg("tf_efficientnet_lite0").to_dict())
    theirs = timm_data.create_transform(**config, is_training=False)(photo)
    ours = quorum_input(get_backbone("timm/tf_efficientnet_lite0"), size, photo)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [224, 96])  # 96 / 0.875 = 109.7: floored, as eval_pixels does
def test_tta_view_0_is_the_eval_crop(size, photo):
    preprocessing = get_backbone("timm/tf_efficientnet_lite0").preprocessing(size)
    views = preprocessing.tta_pixels(2)(photo)
    assert torch.equal(views[0], preprocessing.eval_pixels()(photo))
    assert torch.equal(views[1], views[0].flip(-1))


def test_the_normalizer_is_torchvisions_arithmetic_to_the_bit_and_leaves_its_input_alone(photo):
    preprocessing = get_backbone("resnet50").preprocessing(64)
    pixels = preprocessing.eval_pixels()(photo)[None]
    theirs = T.Normalize(preprocessing.mean, preprocessing.std)(T.ConvertImageDtype(torch.float32)(pixels))
    assert torch.equal(preprocessing.normalizer()(pixels), theirs)
    floats = pixels.float()  # normalised in place, a float input would come back changed without the copy
    before = floats.clone()
    preprocessing.normalizer()(floats)
    assert torch.equal(floats, before)
