"""The registry of backbones: how to build each one, where its head is, and its blocks in order.

Every entry builds the *original* architecture (so torchvision's, timm's or a user's state dict
loads into it unchanged) and then `split`s it into a `Classifier`: blocks in order plus a new head.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision.models as tvm
from torch import nn

from quorum.errors import QuorumError
from quorum.models.backbone import Backbone
from quorum.models.classifier import Classifier, linear_head


def _flat(*modules: nn.Module) -> nn.Sequential:
    return nn.Sequential(*modules, nn.Flatten(1))


def _split_resnet(net: nn.Module, num_classes: int) -> Classifier:
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    blocks = [stem, net.layer1, net.layer2, net.layer3, _flat(net.layer4, net.avgpool)]
    return Classifier(blocks, linear_head(net.fc.in_features, num_classes, dropout=0.0))


def _split_features_classifier(net: nn.Module, num_classes: int) -> Classifier:
    """MobileNetV2 and EfficientNet: `features`, global pool, then Dropout + Linear."""
    features = list(net.features)
    blocks = features[:-1] + [_flat(features[-1], nn.AdaptiveAvgPool2d(1))]
    dropout, linear = net.classifier[0].p, net.classifier[-1]
    return Classifier(blocks, linear_head(linear.in_features, num_classes, dropout))


def _split_mobilenet_v3(net: nn.Module, num_classes: int) -> Classifier:
    # Its classifier starts with a pretrained Linear + Hardswish: keep those in the last block.
    features = list(net.features)
    last = _flat(features[-1], net.avgpool)
    last.extend([net.classifier[0], net.classifier[1]])
    head = linear_head(net.classifier[3].in_features, num_classes, net.classifier[2].p)
    return Classifier(features[:-1] + [last], head)


class _ViTStem(nn.Module):
    """Patchify, prepend the class token, add position embeddings: the part before the encoder layers."""

    def __init__(self, vit: tvm.VisionTransformer):
        super().__init__()
        self.conv_proj, self.class_token = vit.conv_proj, vit.class_token
        self.pos_embedding, self.dropout = vit.encoder.pos_embedding, vit.encoder.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)  # (n, patches, hidden), as torchvision does
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.dropout(x + self.pos_embedding)


class _ClassToken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


def _split_vit(net: nn.Module, num_classes: int) -> Classifier:
    layers = list(net.encoder.layers)
    blocks = [_ViTStem(net), *layers[:-1], nn.Sequential(layers[-1], net.encoder.ln, _ClassToken())]
    return Classifier(blocks, linear_head(net.hidden_dim, num_classes, dropout=0.0))


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def _make_tinyvgg(pretrained: bool) -> nn.Module:
    """A small CNN trained from scratch: the baseline that shows what pretraining buys."""
    blocks = [_conv_block(3, 32), _conv_block(32, 64), _flat(_conv_block(64, 128), nn.AdaptiveAvgPool2d(1))]
    return Classifier(blocks, linear_head(128, 1000, dropout=0.2))


def _split_tinyvgg(net: nn.Module, num_classes: int) -> Classifier:
    return Classifier(list(net.blocks), linear_head(128, num_classes, dropout=0.2))


def _torchvision(name: str, builder: Callable[..., nn.Module], split: Callable[[nn.Module, int], Classifier],
                 head_keys: tuple[str, ...], **extra) -> Backbone:
    """A torchvision model with the eval transform of its default weights, read from their metadata
    (`weights.transforms()`: no download), so fine-tuning starts from the pixels it was pretrained on."""
    weights = tvm.get_model_weights(builder).DEFAULT
    transform = weights.transforms()
    crop, resize = transform.crop_size[0], transform.resize_size[0]
    return Backbone(name, lambda pretrained: builder(weights=weights if pretrained else None), split, head_keys,
                    native_size=crop, mean=tuple(transform.mean), std=tuple(transform.std), crop_fraction=crop / resize,
                    interpolation=transform.interpolation.value, **extra)


_BUILTIN = [
    _torchvision("mobilenet_v2", tvm.mobilenet_v2, _split_features_classifier, ("classifier.",)),
    _torchvision("mobilenet_v3_small", tvm.mobilenet_v3_small, _split_mobilenet_v3, ("classifier.3.",)),
    _torchvision("mobilenet_v3_large", tvm.mobilenet_v3_large, _split_mobilenet_v3, ("classifier.3.",)),
    _torchvision("resnet18", tvm.resnet18, _split_resnet, ("fc.",)),
    _torchvision("resnet50", tvm.resnet50, _split_resnet, ("fc.",)),
    _torchvision("efficientnet_b0", tvm.efficientnet_b0, _split_features_classifier, ("classifier.",)),
    _torchvision("efficientnet_b2", tvm.efficientnet_b2, _split_features_classifier, ("classifier.",)),
    _torchvision("vit_b_16", tvm.vit_b_16, _split_vit, ("heads.",), fixed_size=True),
    Backbone("tinyvgg", _make_tinyvgg, _split_tinyvgg, ("head.",), native_size=64, mean=(0.5,) * 3,
             std=(0.5,) * 3, pretrained_available=False),
]
BACKBONES: dict[str, Backbone] = {b.name: b for b in _BUILTIN}


def get_backbone(name: str) -> Backbone:
    if name in BACKBONES:
        return BACKBONES[name]
    if name.startswith("timm/"):
        from quorum.models.timm_backbones import (
            timm_backbone,  # timm is optional: import only when asked
        )

        return timm_backbone(name.removeprefix("timm/"))
    choices = ", ".join(BACKBONES)
    raise QuorumError(f"unknown backbone '{name}': choose one of {choices}, or timm/<model> with timm installed")


def count_blocks(name: str) -> int:
    """How many blocks `--train-blocks` can choose from (built without weights, so it is cheap-ish)."""
    backbone = get_backbone(name)
    return len(backbone.split(backbone.make(False), 2).blocks)
