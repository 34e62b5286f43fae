"""`quorum demo`: the whole workflow on sample_data/, start to finish, through the library.

1. Fine-tune the three reference models (MobileNetV2 at 64 and 224 px, ResNet50 at 224 px) with a
   short recipe. ImageNet weights are tried first; with no network the demo says so once and goes
   on from random weights, with a recipe that can still learn something in a few minutes.
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
from quorum.predict.pipeline import predict
from quorum.predict.table import check_writable, write_predictions
from quorum.report.build import Report, build_report, print_table
from quorum.report.html import write_report
from quorum.train.finetune import finetune
from quorum.train.recipe import Recipe

PREDICTIONS = "predictions.csv"
NO_MAJORITY = 0.5  # with three members: flag the images on which all three disagree


@dataclass(frozen=True)
class Plan:
    """One reference model, with a recipe for pretrained weights and one for random ones."""

    backbone: str
    image_size: int
    pretrained: dict  # Recipe fields: a frozen phase on cached features, then a short fine-tune
    scratch: dict  # Recipe fields when no ImageNet weights can be had


# Pretrained: the head learns on cached features (nearly free), then everything trains briefly.
# Random weights: a frozen random MobileNet shrinks its activations ~1e9-fold, so the small model
# trains whole, and the big ones train their last blocks on cached inputs (ResNet50's stay usable).
# Small batches there: more steps per epoch let BatchNorm's running statistics catch up with
# weights that start from nothing, or validation (in eval mode) sees one class for several epochs.
REFERENCE = [
    Plan("mobilenet_v2", 64, dict(epochs=10, unfreeze_after=6),
         dict(epochs=15, unfreeze_after=0, finetune_lr=1e-3, batch_size=16)),
    Plan("mobilenet_v2", 224, dict(epochs=6, unfreeze_after=5),
         dict(epochs=12, unfreeze_after=12, train_blocks=5, batch_size=8)),
    Plan("resnet50", 224, dict(epochs=5, unfreeze_after=4),
         dict(epochs=6, unfreeze_after=6, train_blocks=1, batch_size=16)),
]
# --quick (tests): the same three backbones at tiny sizes, one or two epochs, random weights;
# between them they take every path: whole training, cached frozen phase, unfreezing.
QUICK = [
    Plan("mobilenet_v2", 32, {}, dict(epochs=1, unfreeze_after=0, finetune_lr=1e-3, batch_size=16)),
    Plan("mobilenet_v2", 48, {}, dict(epochs=2, unfreeze_after=1, train_blocks=5, batch_size=16)),
    Plan("resnet50", 32, {}, dict(epochs=1, unfreeze_after=1, train_blocks=1, batch_size=16)),
]


@dataclass(frozen=True)
class DemoResult:
    model_dirs: list[Path]
    predictions: Path
    report: Report
    files: list[Path]  # the report's, index.html last
    weights: str  # imagenet | none
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
         quiet: bool = False) -> DemoResult:
    began = time.perf_counter()
    data, unlabelled, labels, models_dir, out = map(Path, (data, unlabelled, labels, models_dir, out))
    check_inputs(data, unlabelled, labels)
    predictions = out / PREDICTIONS
    out.mkdir(parents=True, exist_ok=True)
    check_writable(predictions)

    plans = QUICK if quick else REFERENCE
    weights = "none" if quick else "imagenet"
    if quick:
        say("--quick: tiny inputs, one or two epochs, random initial weights: a check that everything runs", quiet)
    model_dirs = []
    for step, plan in enumerate(plans, 1):
        say(f"\n[bold][{step}/{len(plans)}] Fine-tuning {plan.backbone} at {plan.image_size} px[/bold]", quiet)
        model_dir, weights = finetune_plan(plan, weights, data, models_dir, device, workers, quiet)
        model_dirs.append(model_dir)

    say(f"\n[bold]Voting on {escape(str(unlabelled))}[/bold]", quiet)
    frame = predict(unlabelled, model_dirs, device=device, workers=workers, min_agreement=NO_MAJORITY, quiet=quiet)
    write_predictions(frame, predictions)

    say("\n[bold]Scoring and writing the report[/bold]", quiet)
    report = build_report(models_dir, tuple(path.name for path in model_dirs), data=None, preds=predictions,
                          labels=labels, device=device, workers=workers, quiet=quiet)
    written = write_report(report, out)
    return DemoResult(model_dirs, predictions, report, written, weights, time.perf_counter() - began)


def finetune_plan(plan: Plan, weights: str, data: Path, models_dir: Path, device: str, workers: int,
                  quiet: bool) -> tuple[Path, str]:
    """Fine-tune one reference model; returns its folder and the weights the next one should start from."""
    def recipe(start: str) -> Recipe:
        fields = plan.pretrained if start == "imagenet" else plan.scratch
        base = Recipe(backbone=plan.backbone, image_size=plan.image_size, data=str(data), models_dir=str(models_dir),
                      weights=start, device=device, workers=workers, cache_views=1)
        return dataclasses.replace(base, **fields)

    if weights == "imagenet":
        try:
            return finetune(recipe("imagenet"), quiet=quiet), "imagenet"
        except WeightsUnavailable:
            say("[yellow]No network: the ImageNet weights could not be downloaded, so every model starts from "
                "random weights (expect far lower accuracy). To fine-tune offline from pretrained weights, give "
                "quorum finetune --weights PATH to a state dict on disk.[/yellow]")
    return finetune(recipe("none"), quiet=quiet), "none"


def print_outcome(result: DemoResult, quiet: bool = False) -> None:
    """The comparison, the scores on the unlabelled images, and where every file is."""
    print_table(result.report, quiet)  # with --quiet only the lines below: what came out, and where
    preds = result.report.preds or {}
    if preds.get("scores"):
        listed = ", ".join(f"{name} {scores['accuracy']:.1%}" for name, scores in preds["scores"].items())
        say(escape(f"On the {preds['labelled']} unlabelled images, against their true labels: {listed}"))
    start = "ImageNet weights" if result.weights == "imagenet" else "random initial weights"
    say(f"\nDone in {result.seconds / 60:.1f} min, from {start}.")
    say(escape(f"  models:      {', '.join(str(path) for path in result.model_dirs)}"))
    say(escape(f"  predictions: {result.predictions}"))
    say(escape(f"  report:      {result.files[-1]}  (open it in a browser)"))
