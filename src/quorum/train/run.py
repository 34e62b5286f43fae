"""The state of one fine-tuning run, epoch by epoch: phases, optimizer, cache, the epoch it keeps.

Under torchrun every process holds a `TrainingRun`: each trains on its share of every epoch
through DistributedDataParallel, validates its share, and the shares are gathered so the metrics
cover the whole validation set. Only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, Subset

from quorum import distributed, files
from quorum.calibration import fit_calibration
from quorum.console import say
from quorum.data.datasets import LabelledImages, make_loader
from quorum.data.pseudo_labels import PseudoLabels, SoftTargets
from quorum.data.split import Split
from quorum.errors import QuorumError
from quorum.metrics import classification_metrics
from quorum.models import bundle
from quorum.models.classifier import count_parameters, first_trainable_block, freeze
from quorum.models.features import store_training_features
from quorum.models.inference import TorchInference
from quorum.models.registry import get_backbone
from quorum.train import cache, checkpoint
from quorum.train.loop import (
    evaluate,
    make_optimizer,
    train_one_epoch,
    validation_loss,
    warmup_cosine,
)
from quorum.train.recipe import Recipe
from quorum.train.summary import best_epoch, print_finished_model, provenance


class TrainingRun:
    """The state of one fine-tuning run: model, current phase's optimizer, history, the epoch it keeps."""

    def __init__(self, recipe: Recipe, split: Split, model, device: torch.device, work_dir: Path,
                 world: distributed.World, quiet: bool, pseudo: PseudoLabels | None = None,
                 soft: SoftTargets | None = None):
        self.recipe, self.split, self.model, self.device = recipe, split, model, device
        self.work_dir, self.world, self.quiet, self.pseudo, self.soft = work_dir, world, quiet, pseudo, soft
        self.preprocessing = get_backbone(recipe.backbone).preprocessing(recipe.image_size)
        self.inference = TorchInference(model, self.preprocessing, device)  # validation runs as predict does
        # Pseudo-labelled images (absolute paths) join the training share only: validation stays the split's.
        train_items = split.items("train") + (pseudo.items if pseudo is not None else [])
        smoothing = recipe.label_smoothing
        if soft is not None:  # every target a probability vector, so one loss serves labelled and unlabelled rows
            train_items = [(path, smoothed(label, len(split.classes), smoothing)) for path, label in train_items]
            train_items += soft.items
            smoothing = 0.0  # already in the labelled rows' targets; the teachers' probabilities stay as given
        self.train_set = LabelledImages(split.root, train_items,
                                        self.preprocessing.train_pixels(strong=soft is not None))
        self.val_set = LabelledImages(split.root, split.items("val"), self.preprocessing.eval_pixels())
        if len(self.val_set) == 0:
            raise QuorumError("no validation images: "
                              f"give each class in {split.root} at least 2 images, or a val/ folder")
        # With probability targets this is KL(target || student) plus the targets' own entropy: the same gradient.
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=smoothing)
        # One for the run: its loss scale is learnt across steps (fp16 on CUDA only; a no-op elsewhere).
        self.scaler = torch.amp.GradScaler(enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported())
        self.history: list[dict] = []
        self.kept = {"epoch": -1}  # the epoch the bundle keeps (recipe.keep): its number, metrics, calibration
        self.phase, self.optimizer, self.scheduler, self.next_epoch = 0, None, None, 0
        self.trainer: nn.Module = model  # the model, or its DistributedDataParallel wrapper
        self.cache: cache.FeatureCache | None = None
        self.kept_model: dict[str, torch.Tensor] = {}  # the kept epoch's weights and val_predictions.csv (rank 0)
        self.kept_predictions = ""

    def phase_of(self, epoch: int) -> int:
        return 1 if epoch < self.recipe.frozen_epochs else 2

    def start_phase(self, phase: int) -> None:
        """Freeze for the phase, then a fresh optimizer and schedule over what now trains."""
        recipe = self.recipe
        freeze(self.model, recipe.train_blocks if phase == 1 else None)
        if self.world.active:  # DDP must be (re)built after requires_grad changes
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.trainer = DistributedDataParallel(self.model, device_ids=ids)
        lr = recipe.lr if phase == 1 else recipe.finetune_lr
        self.optimizer = make_optimizer(self.model, lr, recipe.weight_decay)
        epochs = recipe.frozen_epochs if phase == 1 else recipe.epochs - recipe.frozen_epochs
        steps = epochs * self.steps_per_epoch()
        warmup = max(1, min(steps // 2, round(recipe.warmup_epochs * self.steps_per_epoch())))
        self.scheduler = warmup_cosine(self.optimizer, warmup, steps)
        self.phase = phase

    def steps_per_epoch(self) -> int:
        share = -(-len(self.train_set) // self.world.size)
        return -(-share // self.recipe.batch_size)

    def loaders(self, epoch: int, phase: int) -> tuple[int, object, object]:
        """(first block to run, train loader, val loader) for this epoch, each over this process's share."""
        recipe, world = self.recipe, self.world
        seed = recipe.seed + epoch + 100_003 * world.rank  # augmentation differs across processes
        # Built first (at the first frozen epoch, or the first after a resume), since building seeds its own
        # views: then augmentation and dropout draw from this epoch's seed, with or without --resume.
        feature_cache = self.feature_cache() if phase == 1 else None
        torch.manual_seed(seed)
        if feature_cache:
            return (feature_cache.start, feature_cache.train_loader(epoch, recipe.batch_size, seed),
                    feature_cache.val_loader(recipe.batch_size))
        sampler = None
        if world.active:
            sampler = DistributedSampler(self.train_set, world.size, world.rank, shuffle=True, seed=recipe.seed)
            sampler.set_epoch(epoch)
        pin = self.device.type == "cuda"
        train = make_loader(self.train_set, recipe.batch_size, True, recipe.workers, seed=seed, sampler=sampler,
                            pin_memory=pin)
        val = make_loader(Subset(self.val_set, world.share(len(self.val_set))), recipe.batch_size, False,
                          recipe.workers, pin_memory=pin)
        return 0, train, val

    def epoch(self, epoch: int) -> None:
        recipe, phase = self.recipe, self.phase_of(epoch)
        if phase != self.phase:
            self.start_phase(phase)
        start, train_loader, val_loader = self.loaders(epoch, phase)
        stats = train_one_epoch(self.trainer, train_loader, self.optimizer, self.scheduler, self.scaler, self.loss_fn,
                                self.device,
                                recipe.train_blocks if phase == 1 else None, self.inference.normalize, start=start,
                                quiet=self.quiet, description=f"epoch {epoch + 1}/{recipe.epochs}",
                                keep_norm_stats=recipe.keeps_norm_stats)
        lr = stats["lr"]  # the mean rate the epoch trained with (the scheduler's is already the next one's)
        probs, labels, positions = self.validate(val_loader, start)
        val_loss, val_acc = validation_loss(probs, labels), float((probs.argmax(1) == labels).mean())
        row = {"epoch": epoch + 1, "phase": phase, "trainable_params": count_parameters(self.model, True),
               "lr": lr, "train_loss": stats["loss"], "train_accuracy": stats["accuracy"],
               "val_loss": val_loss, "val_accuracy": val_acc, "seconds": stats["seconds"]}
        self.history.append(row)
        say(f"epoch {epoch + 1}/{recipe.epochs} phase {phase} trainable {row['trainable_params']:,} lr {lr:.1e} "
            f"train {stats['loss']:.3f}/{stats['accuracy']:.1%} val {val_loss:.3f}/{val_acc:.1%} "
            f"{stats['seconds']:.1f}s", self.quiet)
        if recipe.keep == "last" or best_epoch(self.history) == epoch + 1:  # last: each epoch replaces the one before
            self.keep_epoch(epoch + 1, probs, labels, positions)
        if self.world.is_main:
            checkpoint.save(self.work_dir, self.state(epoch))

    def validate(self, loader, start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Probabilities, labels and val-set positions of the whole validation set, shares gathered."""
        # Positions are already val-set positions: LabelledImages returns its own index, also through a Subset.
        probs, labels, positions = evaluate(self.inference, loader, self.quiet, start=start)
        shares = distributed.gather(self.world, (probs, labels, positions))
        probs, labels, positions = (np.concatenate([s[i] for s in shares if len(s[2])]) for i in range(3))
        order = np.argsort(positions, kind="stable")
        return probs[order], labels[order], positions[order]

    def feature_cache(self) -> cache.FeatureCache | None:
        """Built once, at the first frozen epoch; None when turned off or too big for memory."""
        recipe = self.recipe
        if self.cache is not None or not recipe.cache_features:
            return self.cache
        start = first_trainable_block(self.model, recipe.train_blocks)
        views = max(1, min(recipe.cache_views, recipe.frozen_epochs))
        train_share = Subset(self.train_set, self.world.share_padded(len(self.train_set)))
        val_share = Subset(self.val_set, self.world.share(len(self.val_set)))
        images = views * len(train_share) + len(val_share)
        needed = cache.estimate_bytes(self.model, start, recipe.image_size, images, self.device)
        budget = cache.memory_budget()
        if needed > budget:
            say(f"[yellow]Feature cache would need {needed / 2**30:.1f} GiB (budget {budget / 2**30:.1f} GiB): "
                "phase 1 runs the whole backbone every epoch (use fewer --train-blocks to cache)[/yellow]", self.quiet)
            self.recipe = dataclasses.replace(recipe, cache_features=False)
            return None
        self.cache = cache.build(self.model, self.inference.normalize, start, train_share, val_share, views,
                                 self.device, recipe.batch_size, recipe.workers,
                                 recipe.seed + 100_003 * self.world.rank, self.quiet)
        return self.cache

    def keep_epoch(self, number: int, probs, labels, positions) -> None:
        classes = self.split.classes
        self.kept = {"epoch": number, "metrics": classification_metrics(labels, probs.argmax(1), classes)}
        if not self.world.is_main:
            return
        val_items = self.split.items("val")
        frame = pd.DataFrame({"path": [val_items[i][0] for i in positions],
                              "true_label": [classes[i] for i in labels],
                              "predicted_label": [classes[i] for i in probs.argmax(1)]})
        for k, name in enumerate(classes):
            frame[f"p_{name}"] = probs[:, k].round(6)
        # Kept for the checkpoint, not written: the checkpoint is the one file that commits an epoch,
        # so a crash can never pair one epoch's weights with another's metrics.
        self.kept_model = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        self.kept_predictions = files.csv_text(frame)

    def state(self, epoch: int) -> dict:
        # The "best*" keys name the kept epoch (recipe.keep): so named before --keep, and a checkpoint of then resumes.
        return {"epoch": epoch, "phase": self.phase, "recipe": self.recipe.as_dict(),
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "history": json.dumps(self.history),
                "best": json.dumps(self.kept), "best_model": self.kept_model,
                "best_predictions": self.kept_predictions, "scaler": self.scaler.state_dict()}

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.history, self.kept = json.loads(state["history"]), json.loads(state["best"])
        self.kept_model, self.kept_predictions = state["best_model"], state["best_predictions"]
        self.next_epoch = state["epoch"] + 1
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.next_epoch < self.recipe.epochs and self.phase_of(self.next_epoch) == state["phase"]:
            self.start_phase(state["phase"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])

    def finish(self) -> None:
        """Write the bundle, model.json last, then drop the checkpoint: the work folder is now a complete
        bundle. Killed before that, --resume runs no epoch and writes it all again."""
        recipe, kept = self.recipe, self.kept
        self.model.load_state_dict(self.kept_model)
        bundle.save_weights(self.model, self.work_dir)
        files.write_text(self.work_dir / bundle.VAL_PREDICTIONS, self.kept_predictions)
        files.write_csv(self.work_dir / bundle.HISTORY, pd.DataFrame(self.history))
        self.save_features()
        # One temperature, fitted on the raw probabilities just written: `quorum calibrate` refits the same one.
        _, labels, probs = bundle.read_val_predictions(self.work_dir, self.split.classes)
        kept["calibration"] = fit_calibration(probs, labels)
        bundle.write_model_json(self.work_dir, {
            "name": recipe.name, "backbone": recipe.backbone, **self.preprocessing.as_dict(),
            "classes": list(self.split.classes), "num_params": count_parameters(self.model),
            "weights_source": recipe.weights, "epochs_run": len(self.history),
            # kept_epoch: the weights, val_predictions.csv, metrics and calibration here; best_epoch: the one
            # highest on validation (the same one unless keep is last).
            "keep": recipe.keep, "kept_epoch": kept["epoch"], "best_epoch": best_epoch(self.history),
            "metrics": kept["metrics"], "calibration": kept["calibration"],
            "split": {"file": "split.csv", "digest": self.split.digest,
                      "val_images": len(self.val_set), **self.split.drawn_with,
                      "root": str(Path(self.split.root).resolve())},
            "recipe": recipe.as_dict(), "processes": self.world.size, "versions": provenance(),
            **({"pseudo_labels": self.pseudo.as_dict(self.split.classes)} if self.pseudo is not None else {}),
            **({"distill": self.soft.as_dict()} if self.soft is not None else {}),
        })
        checkpoint.remove(self.work_dir)

    def save_features(self) -> None:
        """The kept model's features of the training and validation images (`models.features`), for predict's
        unknown score: the distance from an image to its nearest training images in them."""
        store_training_features(self.work_dir, self.inference, self.split.root,
                                [path for path, _ in self.split.items("train")],
                                [path for path, _ in self.split.items("val")], self.recipe.batch_size,
                                self.recipe.workers, self.quiet)

    def print_finished_model(self, final_dir: Path) -> None:
        print_finished_model(final_dir, self.history, self.kept, self.recipe.keep, self.quiet)


def smoothed(label: int, classes: int, smoothing: float) -> np.ndarray:
    """A hard label as the probability vector CrossEntropyLoss(label_smoothing) trains towards."""
    target = np.full(classes, smoothing / classes, np.float32)
    target[label] += 1.0 - smoothing
    return target
