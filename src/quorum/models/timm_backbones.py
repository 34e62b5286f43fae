"""Any timm model as `timm/<name>`: EfficientNet-style models get one block per stage, others one body."""

from __future__ import annotations

from torch import nn

from quorum.data.preprocess import CROP_FRACTION, INTERPOLATIONS
from quorum.errors import QuorumError
from quorum.models.backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone
from quorum.models.classifier import Classifier, linear_head


class _TimmBody(nn.Module):
    """A whole timm model up to its pooled features: works for every timm architecture."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)


def _split_timm(net: nn.Module, num_classes: int) -> Classifier:
    head = linear_head(net.num_features, num_classes, dropout=getattr(net, "drop_rate", 0.0))
    if all(hasattr(net, part) for part in ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool")):
        # EfficientNet / MobileNet family: stem, one block per stage, then head conv + pool.
        stages = list(net.blocks)
        last = nn.Sequential(stages[-1], net.conv_head, net.bn2, net.global_pool)
        return Classifier([nn.Sequential(net.conv_stem, net.bn1), *stages[:-1], last], head)
    net.reset_classifier(0)
    net.drop_rate = 0.0  # the new head applies the dropout
    return Classifier([_TimmBody(net)], head)


def timm_backbone(model_name: str) -> Backbone:
    try:
        import timm
    except ImportError:
        raise QuorumError(f"timm/{model_name} needs timm: pip install 'quorum[timm]' (or pip install timm)") from None
    if not timm.is_model(model_name):
        raise QuorumError(f"unknown timm model '{model_name}': "
                          'list them with python -c "import timm; print(timm.list_models())"')
    config = timm.get_pretrained_cfg(model_name)
    config = config.to_dict() if config is not None else {}
    interpolation = config.get("interpolation", "bilinear")  # timm also has e.g. "random": not for eval
    return Backbone(
        name=f"timm/{model_name}",
        make=lambda pretrained: timm.create_model(model_name, pretrained=pretrained),
        split=_split_timm,
        head_keys=(f"{config.get('classifier', 'classifier')}.",),
        native_size=int(config.get("input_size", (3, 224, 224))[-1]),
        mean=tuple(config.get("mean", IMAGENET_MEAN)),
        std=tuple(config.get("std", IMAGENET_STD)),
        fixed_size=bool(config.get("fixed_input_size", False)),
        crop_fraction=float(config.get("crop_pct", CROP_FRACTION)),
        interpolation=interpolation if interpolation in INTERPOLATIONS else "bilinear",
    )
