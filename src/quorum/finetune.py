"""`quorum finetune`: the two-phase recipe, from a labelled folder to a finished model bundle.

1. Phase 1 (the first `unfreeze_after` epochs): the backbone is frozen except its last
   `train_blocks` blocks; the new head learns at `lr`.
2. Phase 2: everything trains at the lower `finetune_lr`, each phase with its own warm-up.
3. The best epoch by validation accuracy is kept. The run works in `models/.<name>.partial/`
   and is moved to `models/<name>/` only when finished, so a model folder is never half-written.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from torch import nn

from quorum import bundle, cache, checkpoint, files, weights
from quorum.backbones import get_backbone
from quorum.console import say
from quorum.data import LabelledImages, Split, load_or_make_split, make_loader
from quorum.device import pick_device
from quorum.errors import QuorumError
from quorum.metrics import classification_metrics
from quorum.model import count_parameters, first_trainable_block, freeze
from quorum.recipe import Recipe
from quorum.summary import print_summary, provenance
from quorum.train import make_optimizer, predict_loader, train_one_epoch, validation_loss, warmup_cosine
from quorum.transforms import eval_transform, train_transform


def finetune(recipe: Recipe, resume: bool = False, resplit: bool = False, quiet: bool = False,
             on_epoch_end: Callable[[int], None] | None = None) -> Path:
    """Run the recipe and return the finished model's folder."""
    backbone = get_backbone(recipe.backbone)
    recipe = recipe.resolve(backbone.native_size, backbone.pretrained_available)
    models_dir = Path(recipe.models_dir)
    work_dir, final_dir = models_dir / f".{recipe.name}.partial", models_dir / recipe.name
    state = checkpoint.load(work_dir) if resume else None
    if resume:
        # The interrupted run's recipe wins, except where it ran: that may differ now.
        recipe = dataclasses.replace(Recipe(**state["recipe"]), device=recipe.device, workers=recipe.workers)
        say(f"Resuming {recipe.name} after epoch {state['epoch'] + 1} of {recipe.epochs}", quiet)
    elif work_dir.exists():
        shutil.rmtree(work_dir)  # an interrupted run the user chose not to resume
    if backbone.fixed_size and recipe.image_size != backbone.native_size:
        raise QuorumError(f"{backbone.name} only takes {backbone.native_size} px images: use --image-size {backbone.native_size}")

    device = pick_device(recipe.device)
    split, is_new = load_or_make_split(Path(recipe.data), models_dir, recipe.val_fraction, recipe.seed,
                                       resplit=resplit, workers=recipe.workers)
    report_split(split, is_new, models_dir, quiet)
    torch.manual_seed(recipe.seed)  # a random-init head (and --weights none) is the same every run
    model = weights.build(backbone, len(split.classes), "none" if resume else recipe.weights)
    if recipe.train_blocks > len(model.blocks):
        raise QuorumError(f"--train-blocks {recipe.train_blocks} is more than {backbone.name}'s {len(model.blocks)} blocks")
    model.to(device)

    run = _Run(recipe, split, model, device, work_dir, quiet)
    if state is not None:
        run.restore(state)
    for epoch in range(run.next_epoch, recipe.epochs):
        run.epoch(epoch)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    run.finish(final_dir, backbone_info={"mean": list(backbone.mean), "std": list(backbone.std)})
    return final_dir


def report_split(split: Split, is_new: bool, models_dir: Path, quiet: bool) -> None:
    counts = split.table.subset.value_counts()
    verb = "Made" if is_new else "Reusing"
    say(f"{verb} the split {models_dir / 'split.csv'}: {counts.get('train', 0)} train, {counts.get('val', 0)} val "
        f"images, {len(split.classes)} classes", quiet)
    unreadable = split.unreadable
    if len(unreadable) and is_new:
        say(f"[yellow]Left out {len(unreadable)} unreadable file(s):[/yellow]")
        for path, reason in zip(unreadable.path, unreadable.reason):
            say(f"  {path}: {reason}")
    elif len(unreadable):
        say(f"[yellow]{len(unreadable)} unreadable file(s) left out (listed in {models_dir / 'split.csv'})[/yellow]", quiet)


class _Run:
    """The state of one fine-tuning run: model, current phase's optimizer, history, best epoch."""

    def __init__(self, recipe: Recipe, split: Split, model, device: torch.device, work_dir: Path, quiet: bool):
        self.recipe, self.split, self.model, self.device = recipe, split, model, device
        self.work_dir, self.quiet = work_dir, quiet
        mean, std = get_backbone(recipe.backbone).mean, get_backbone(recipe.backbone).std
        self.train_set = LabelledImages(split.root, split.items("train"), train_transform(recipe.image_size, mean, std))
        self.val_set = LabelledImages(split.root, split.items("val"), eval_transform(recipe.image_size, mean, std))
        if len(self.val_set) == 0:
            raise QuorumError(f"no validation images: give each class in {split.root} at least 2 images, or a val/ folder")
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
        self.history: list[dict] = []
        self.best = {"accuracy": -1.0, "loss": float("inf"), "epoch": -1}
        self.phase, self.optimizer, self.scheduler, self.next_epoch = 0, None, None, 0
        self.cache: cache.FeatureCache | None = None

    def phase_of(self, epoch: int) -> int:
        return 1 if epoch < self.recipe.frozen_epochs else 2

    def start_phase(self, phase: int) -> None:
        """Freeze for the phase, then a fresh optimizer and schedule over what now trains."""
        recipe = self.recipe
        freeze(self.model, recipe.train_blocks if phase == 1 else None)
        lr = recipe.lr if phase == 1 else recipe.finetune_lr
        self.optimizer = make_optimizer(self.model, lr, recipe.weight_decay)
        epochs = recipe.frozen_epochs if phase == 1 else recipe.epochs - recipe.frozen_epochs
        steps = epochs * self.steps_per_epoch()
        warmup = max(1, min(steps // 2, round(recipe.warmup_epochs * self.steps_per_epoch())))
        self.scheduler = warmup_cosine(self.optimizer, warmup, steps)
        self.phase = phase

    def steps_per_epoch(self) -> int:
        return -(-len(self.train_set) // self.recipe.batch_size)

    def epoch(self, epoch: int) -> None:
        recipe, phase = self.recipe, self.phase_of(epoch)
        if phase != self.phase:
            self.start_phase(phase)
        feature_cache = self.feature_cache() if phase == 1 else None
        torch.manual_seed(recipe.seed + epoch)  # augmentation and dropout: the same with or without --resume
        if feature_cache:
            start = feature_cache.start
            loader = feature_cache.train_loader(epoch, recipe.batch_size, seed=recipe.seed + epoch)
            val_loader = feature_cache.val_loader(recipe.batch_size)
        else:
            start = 0
            loader = make_loader(self.train_set, recipe.batch_size, True, recipe.workers, seed=recipe.seed + epoch)
            val_loader = make_loader(self.val_set, recipe.batch_size, False, recipe.workers)
        stats = train_one_epoch(self.model, loader, self.optimizer, self.scheduler, self.loss_fn, self.device,
                                recipe.train_blocks if phase == 1 else None, start=start, quiet=self.quiet,
                                description=f"epoch {epoch + 1}/{recipe.epochs}")
        lr = self.scheduler.get_last_lr()[0]
        probs, labels, positions = predict_loader(self.model, val_loader, self.device, self.quiet, start=start)
        val_loss, val_acc = validation_loss(probs, labels), float((probs.argmax(1) == labels).mean())
        row = {"epoch": epoch + 1, "phase": phase, "trainable_params": count_parameters(self.model, True),
               "lr": lr, "train_loss": stats["loss"], "train_accuracy": stats["accuracy"],
               "val_loss": val_loss, "val_accuracy": val_acc, "seconds": stats["seconds"]}
        self.history.append(row)
        say(f"epoch {epoch + 1}/{recipe.epochs} phase {phase} trainable {row['trainable_params']:,} lr {lr:.1e} "
            f"train {stats['loss']:.3f}/{stats['accuracy']:.1%} val {val_loss:.3f}/{val_acc:.1%} "
            f"{stats['seconds']:.1f}s", self.quiet)
        if (val_acc, -val_loss) > (self.best["accuracy"], -self.best["loss"]):
            self.best = {"accuracy": val_acc, "loss": val_loss, "epoch": epoch + 1}
            self.save_best(probs, labels, positions)
        checkpoint.save(self.work_dir, self.state(epoch))

    def feature_cache(self) -> cache.FeatureCache | None:
        """Built once, at the first frozen epoch; None when turned off or too big for memory."""
        recipe = self.recipe
        if self.cache is not None or not recipe.cache_features:
            return self.cache
        start = first_trainable_block(self.model, recipe.train_blocks)
        views = max(1, min(recipe.cache_views, recipe.frozen_epochs))
        images = views * len(self.train_set) + len(self.val_set)
        needed, budget = cache.estimate_bytes(self.model, start, recipe.image_size, images, self.device), cache.memory_budget()
        if needed > budget:
            say(f"[yellow]Feature cache would need {needed / 2**30:.1f} GiB (budget {budget / 2**30:.1f} GiB): "
                "phase 1 runs the whole backbone every epoch (use fewer --train-blocks to cache)[/yellow]", self.quiet)
            self.recipe = dataclasses.replace(recipe, cache_features=False)
            return None
        self.cache = cache.build(self.model, start, self.train_set, self.val_set, views, self.device,
                                 recipe.batch_size, recipe.workers, recipe.seed, self.quiet)
        return self.cache

    def save_best(self, probs, labels, positions) -> None:
        classes = self.split.classes
        val_items = self.split.items("val")
        frame = pd.DataFrame({"path": [val_items[i][0] for i in positions],
                              "true_label": [classes[i] for i in labels],
                              "predicted_label": [classes[i] for i in probs.argmax(1)]})
        for k, name in enumerate(classes):
            frame[f"p_{name}"] = probs[:, k].round(6)
        bundle.save_weights(self.model, self.work_dir)
        files.write_csv(self.work_dir / bundle.VAL_PREDICTIONS, frame)
        self.best["metrics"] = classification_metrics(labels, probs.argmax(1), classes)

    def state(self, epoch: int) -> dict:
        return {"epoch": epoch, "phase": self.phase, "recipe": self.recipe.as_dict(),
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "history": json.dumps(self.history),
                "best": json.dumps(self.best)}

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.history, self.best = json.loads(state["history"]), json.loads(state["best"])
        self.next_epoch = state["epoch"] + 1
        if self.next_epoch < self.recipe.epochs and self.phase_of(self.next_epoch) == state["phase"]:
            self.start_phase(state["phase"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])

    def finish(self, final_dir: Path, backbone_info: dict) -> None:
        recipe, best = self.recipe, self.best
        files.write_csv(self.work_dir / bundle.HISTORY, pd.DataFrame(self.history))
        bundle.write_model_json(self.work_dir, {
            "name": recipe.name, "backbone": recipe.backbone, "image_size": recipe.image_size, **backbone_info,
            "classes": list(self.split.classes), "num_params": count_parameters(self.model),
            "weights_source": recipe.weights, "best_epoch": best["epoch"], "epochs_run": len(self.history),
            "metrics": best["metrics"], "split": {"file": "split.csv", "digest": self.split.digest,
                                                  "val_images": len(self.val_set)},
            "recipe": recipe.as_dict(), "versions": provenance(),
        })
        checkpoint.remove(self.work_dir)
        _replace_dir(self.work_dir, final_dir)
        print_summary(final_dir, self.history, best, self.quiet)


def _replace_dir(new: Path, target: Path) -> None:
    """Swap the finished run into place; the previous model stays whole until the last moment."""
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    new.rename(target)
    if old.exists():
        shutil.rmtree(old)
