"""One epoch of training, one pass of validation, and the per-phase learning-rate schedule."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import torch
from torch import nn

from quorum import distributed
from quorum.console import track
from quorum.device import autocast
from quorum.models.classifier import Classifier, set_train_mode
from quorum.models.inference import TorchInference


def make_optimizer(model: Classifier, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the parameters that train in this phase; no weight decay on norms and biases."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up, then cosine decay to zero: one schedule per phase, stepped per batch.
    Warm-up matters most in phase 2, where a full learning rate on fresh gradients would wreck
    the pretrained features the frozen phase relied on."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_one_epoch(model: Classifier, loader, optimizer, scheduler, scaler: torch.amp.GradScaler, loss_fn: nn.Module,
                    device: torch.device, train_blocks: int | None, normalize: nn.Module, start: int = 0,
                    quiet: bool = False,
                    description: str = "train", keep_norm_stats: bool = False) -> dict:
    """The loader yields uint8 images, which `normalize` turns into the model's input, or with
    `start` > 0 cached inputs of block `start`. `model` may be wrapped in DistributedDataParallel.
    `scaler` is the run's one GradScaler, so its loss scale carries from epoch to epoch.
    Returns the mean loss, accuracy and learning rate over the epoch's steps, and its seconds."""
    set_train_mode(getattr(model, "module", model), train_blocks, keep_norm_stats)
    loss_sum, correct, seen, began = 0.0, 0, 0, time.perf_counter()
    lr_sum, trained = 0.0, 0
    # Under torchrun, every process takes the same number of steps and skips the same ones: a process
    # without images for a step (all unreadable, or a shorter share of cached features) would otherwise
    # skip its backward pass while the others wait for it in all-reduce.
    steps = distributed.most(len(loader))
    for batch in track(itertools.islice(itertools.chain(loader, itertools.repeat(None)), steps), steps,
                       description, quiet):
        if not distributed.everyone(batch is not None):  # every image of this batch was unreadable
            continue
        inputs, labels = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        if start == 0:
            inputs = normalize(inputs)
        with autocast(device):
            logits = model(inputs, start=start)
            loss = loss_fn(logits, labels)
        lr_sum, trained = lr_sum + optimizer.param_groups[0]["lr"], trained + 1  # the rate this step trains with
        hard = labels if labels.ndim == 1 else labels.argmax(1)  # soft targets (distillation): their top class
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        loss_sum += loss.item() * len(labels)
        correct += (logits.argmax(1) == hard).sum().item()
        seen += len(labels)
    return {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1),
            "lr": lr_sum / max(trained, 1), "seconds": time.perf_counter() - began}


def evaluate(inference: TorchInference, loader, quiet: bool = False, description: str = "validate",
             start: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Softmax probabilities, labels and dataset positions of every readable item, in loader order."""
    probs, labels, positions = [], [], []
    for batch in track(loader, len(loader), description, quiet):
        if batch is None:
            continue
        probs.append(inference(batch[0], start=start))
        labels.append(batch[1].numpy())
        positions.append(batch[2].numpy())
    if not probs:
        return np.zeros((0, 0)), np.zeros(0, int), np.zeros(0, int)
    return np.concatenate(probs), np.concatenate(labels), np.concatenate(positions)


def validation_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Cross-entropy of the predicted probabilities (no label smoothing: comparable across recipes)."""
    if len(labels) == 0:
        return float("nan")
    picked = probs[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(picked, 1e-12, None)).mean())
