"""Predict: the naive way against `quorum predict` and `quorum predict --lazy`, on the same photos.

The naive way is what a typical script does: for each member in turn, its own Dataset that opens
every file with PIL and applies that member's eval transform, its own DataLoader, the model in eval
mode under no_grad; then `quorum.vote.vote` over the stacked probabilities. All three share the
batch size, workers and threads, and all must give the same labels. After a warm-up each way
predicts every photo once, in rounds of a slice of the photos, taking turns to go first.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from quorum.data.images import scan_images
from quorum.data.preprocess import INTERPOLATIONS
from quorum.models.bundle import load_model, read_info
from quorum.predict.members import load_members
from quorum.predict.options import PredictOptions
from quorum.predict.pipeline import predict, predict_arrays
from quorum.predict.table import member_columns
from quorum.predict.vote import vote


class _Files(Dataset):
    def __init__(self, paths: list[Path], transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB"))


def naive_predict(paths: list[Path], model_dirs: list[Path], tie_breaker: int, batch_size: int,
                  workers: int) -> np.ndarray:
    """Class index per image: each member loads and decodes the folder on its own, then the vote."""
    probs = []
    for model_dir in model_dirs:
        model, info = load_model(model_dir, "cpu")
        # What a user writes by hand: torchvision's float transforms, the resize-then-crop model.json gives
        # (timm's crop and interpolation for timm models, the resize floored as timm does).
        p = info.preprocessing
        transform = T.Compose([T.Resize(int(p.size / p.crop_fraction), interpolation=INTERPOLATIONS[p.interpolation],
                                        antialias=True),
                               T.CenterCrop(p.size), T.ToTensor(), T.Normalize(p.mean, p.std)])
        dataset = _Files(paths, transform)
        outputs = []
        with torch.no_grad():
            for x in DataLoader(dataset, batch_size=batch_size, num_workers=workers):
                outputs.append(torch.softmax(model(x), dim=1))
        probs.append(torch.cat(outputs).numpy())
    return vote(np.stack(probs), tie_breaker).label


@dataclass(frozen=True)
class PredictResult:
    trio: str
    members: list[str]
    images: int
    seconds: dict[str, float]  # naive, quorum, lazy
    mismatches: dict[str, int]  # quorum, lazy: images whose label differs from the naive way's
    cheap_agree: float  # share of images on which the two members --lazy runs first agree
    expensive_ran: float  # share of images the tie-breaker still ran on under --lazy
    lazy_ran: dict[str, float]  # each member: share of images it ran on under --lazy
    channels_last: bool  # whether quorum runs the members in channels_last (the naive way: NCHW)
    top_class_share: float  # the most images one label gets from either cheap member: near 1 is degenerate
    accuracy: dict[str, float]  # each member and the vote, against the photos' true labels


def bench_predict(trio: str, folder: Path, labels_csv: Path, model_dirs: list[Path], tie_breaker: str,
                  batch_size: int, workers: int, warmup_images: int, rounds: int) -> PredictResult:
    paths = scan_images(folder).images
    names = [path.name for path in model_dirs]
    tie = names.index(tie_breaker)
    for path in paths:  # every way then reads the files from the page cache, none from disk
        path.read_bytes()
    run_order, channels_last = _warm_up(paths[:warmup_images], model_dirs, tie, batch_size, workers)
    seconds, labels, frames = _timed_rounds(round_folders(folder, paths, rounds), model_dirs, tie_breaker,
                                            batch_size, workers)

    classes = np.asarray(read_info(model_dirs[0]).classes, dtype=object)
    mismatches = {way: int((frame.prediction.to_numpy() != classes[labels]).sum()) for way, frame in frames.items()}
    full, lazy = frames["quorum"], frames["lazy"]
    cheap = run_order[:2]  # --lazy runs these two first: where they agree, the third is skipped
    truth = pd.read_csv(labels_csv).set_index("path").label.reindex(full.path).to_numpy()
    label = {name: member_columns(name)[0] for name in names}  # each member's label column
    accuracy = {name: float((full[label[name]].to_numpy() == truth).mean()) for name in names}
    accuracy["vote"] = float((full.prediction.to_numpy() == truth).mean())
    return PredictResult(trio, names, len(paths), seconds, mismatches,
                         cheap_agree=float((full[label[cheap[0]]] == full[label[cheap[1]]]).mean()),
                         expensive_ran=float(lazy[label[tie_breaker]].notna().mean()),
                         lazy_ran={name: float(lazy[label[name]].notna().mean()) for name in names},
                         channels_last=channels_last,
                         top_class_share=max(float(full[label[name]].value_counts(normalize=True).iloc[0])
                                             for name in cheap),
                         accuracy=accuracy)


WAYS = ("naive", "quorum", "lazy")


def _timed_rounds(parts: list[Path], model_dirs: list[Path], tie_breaker: str, batch_size: int,
                  workers: int) -> tuple[dict[str, float], np.ndarray, dict[str, pd.DataFrame]]:
    """Each way on each part, in an order that rotates by round, so load from other work on a
    shared machine falls on all three alike. Returns seconds, naive labels and frames, in file order."""
    seconds, labels, frames = dict.fromkeys(WAYS, 0.0), [], {"quorum": [], "lazy": []}
    tie = [path.name for path in model_dirs].index(tie_breaker)
    for number, part in enumerate(parts):
        for way in WAYS[number % 3:] + WAYS[:number % 3]:
            began = time.perf_counter()
            if way == "naive":
                labels.append(naive_predict(scan_images(part).images, model_dirs, tie, batch_size, workers))
            else:
                options = PredictOptions(tie_breaker=tie_breaker, device="cpu", batch_size=batch_size, workers=workers,
                                         lazy=way == "lazy")
                frames[way].append(predict(part, model_dirs, options, quiet=True))
            seconds[way] += time.perf_counter() - began
    return seconds, np.concatenate(labels), {way: pd.concat(parts, ignore_index=True) for way, parts in frames.items()}


def round_folders(folder: Path, paths: list[Path], rounds: int) -> list[Path]:
    """`rounds` folders holding consecutive slices of the photos, as hard links of the same names."""
    base = folder.with_name(f"{folder.name}-rounds-{rounds}")
    parts = [base / f"round-{number}" for number in range(rounds)]
    for part, chunk in zip(parts, np.array_split(np.arange(len(paths)), rounds)):
        part.mkdir(parents=True, exist_ok=True)
        for index in chunk:
            link = part / paths[index].name
            if not link.exists():
                os.link(paths[index], link)
    return parts


def _warm_up(paths: list[Path], model_dirs: list[Path], tie: int, batch_size: int,
             workers: int) -> tuple[list[str], bool]:
    """One small pass of each way (kernels chosen, imports done). Returns the members in --lazy's
    run order, and whether quorum runs them on torch in channels_last."""
    naive_predict(paths, model_dirs, tie, batch_size, workers)
    members = load_members([read_info(path) for path in model_dirs], torch.device("cpu"))
    for lazy in (False, True):
        predict_arrays(paths, members, tie, torch.device("cpu"), batch_size=batch_size, workers=workers, lazy=lazy,
                       quiet=True)
    order = [member.name for member in sorted(members, key=lambda member: member.cost)]
    if members[0].engine != "torch":  # ONNX Runtime picks its own layout
        return order, False
    run = members[0].run
    return order, _channels_last(getattr(run, "run", run).model)  # under the temperature (inference.Calibrated)


def _channels_last(model: torch.nn.Module) -> bool:
    """Read off the first convolution whose weight's layout tells the two formats apart."""
    for weight in model.parameters():
        if weight.dim() == 4 and weight.shape[1] > 1 and weight.shape[2] * weight.shape[3] > 1:
            return not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last)
    return False
