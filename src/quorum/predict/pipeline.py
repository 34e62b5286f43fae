"""Let an ensemble vote on a folder of images: one row per file, in a stable order.

The pipeline, and why it is shaped this way:
1. Each file is decoded once; a worker derives each member's pixels from it (`Preprocessing.eval_pixels`,
   once per distinct size and crop), as uint8, exactly as validation does.
2. Each member's `TorchInference` normalises on the device and returns probabilities.
3. Unreadable files never enter a batch; they keep their row and a reason, so they cannot shift
   or change any other row (and eval mode keeps one image's result independent of its batch).
4. Members run cheapest first. With `lazy`, an image leaves the queue as soon as `vote.settled`
   says the members still to run cannot change its winner, so its prediction is exactly a full run's.
5. With `tta` N, the worker also derives N-1 augmented views from the same decoded image
   (`Preprocessing.tta_pixels`), and each member's probabilities are its mean over the N views.
6. A row depends only on its own file, so any split of the file list gives the same rows: `--shard`
   jobs, torchrun processes (each takes every world-size-th file still to do) and a resumed run
   (`partial_rows`) all just put rows back in the list's order (`table.assemble`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.markup import escape
from torch.utils.data import DataLoader, Dataset

from quorum import distributed
from quorum.console import say, track
from quorum.data.images import UnreadableImage, load_rgb, scan_images
from quorum.data.preprocess import TTA_MAX_VIEWS, Preprocessing
from quorum.device import pick_device, threads_for
from quorum.errors import QuorumError
from quorum.models.engine import check_engine, device_for_engine
from quorum.models.inference import engine_threads
from quorum.predict import partial_rows, run_identity
from quorum.predict.members import (
    Member,
    describe_engines,
    load_members,
    member_engines,
    read_members,
    tie_breaker_index,
)
from quorum.predict.shards import WHOLE, Shard
from quorum.predict.table import (
    FINGERPRINT,
    MemberOutputs,
    assemble,
    check_columns,
    columns,
    file_fingerprint,
    to_frame,
)
from quorum.predict.unknown import check_keep, threshold
from quorum.predict.validation import fitted_weights
from quorum.predict.vote import MAJORITY_RULE, WEIGHTED, check_rule, settled


def predict(folder: Path, model_dirs: list[Path], *, tie_breaker: str | None = None, device: str = "auto",
            engine: str = "auto", batch_size: int = 32, workers: int = 2, lazy: bool = False, probs: bool = False,
            min_agreement: float | None = None, quiet: bool = False, shard: Shard = WHOLE,
            progress: Path | None = None, resume: bool = False, unknown_keep: float | None = None,
            flag_unknown: bool = True, rule: str = MAJORITY_RULE, tta: int = 1) -> pd.DataFrame | None:
    """One row per image file under `folder` (or its `shard`): the vote, each member's label, status and error.

    Under torchrun each process votes on its share and rank 0 returns the table; the others return None.
    With a `progress` folder, rows are kept there as they finish, and `resume` skips those it holds.
    `unknown_keep`: the share of validation images `unknown` lets pass (`predict.unknown.threshold`; None:
    the default where the validation predictions allow, else no flag); `flag_unknown` False: no flag at all.
    `rule`: the vote rule (`vote.RULES`); `tta`: views per image and member (1: none).
    `frame.attrs` holds `members`, `tie_breaker`, `min_agreement`, `lazy` and `unknown` for `table.closing_lines`,
    `vote` (the rule, its weights and tta) for the CSV's sidecar,
    `identity` (with `progress` or a shard) for `shards.write_part`, and `folder` for the CSV's sidecar.
    """
    # Cheap checks first: a mistake should cost seconds, not a model load or a decoded folder.
    if batch_size < 1:
        raise QuorumError(f"--batch-size must be at least 1 (got {batch_size})")
    if min_agreement is not None and not 0 <= min_agreement <= 1:
        raise QuorumError(f"--min-agreement must be between 0 and 1 (got {min_agreement})")
    if unknown_keep is not None:
        check_keep(unknown_keep)
    check_rule(rule, lazy)
    if not 1 <= tta <= TTA_MAX_VIEWS:
        raise QuorumError(f"--tta {tta} is not a number of views: give 1 (none) to {TTA_MAX_VIEWS}")
    check_engine(engine, device)
    device = device_for_engine(engine, device)
    world = distributed.current(device)
    quiet = quiet or not world.is_main
    torch_device = pick_device(distributed.device_for(world, device))  # before any collective: nccl needs it
    folder = Path(folder)
    scan = scan_images(folder)
    paths = scan.images
    if not paths:
        found = f" ({scan.summary()})" if scan.skipped else ""
        raise QuorumError(f"no images in {folder}{found}: quorum reads every format Pillow opens, "
                          "e.g. .jpg, .png, .tif, .webp, .tga, .ppm")
    if scan.skipped:
        say(escape(f"Not images, so no rows: {scan.summary()} under {folder}"), quiet)
    # Members in name order, however they were given: the CSV's member columns then come in one order.
    infos = read_members(sorted(model_dirs, key=lambda path: Path(path).name))
    tie = tie_breaker_index(infos, tie_breaker)
    names, classes = [info.path.name for info in infos], infos[0].classes
    check_columns(names, classes, probs, min_agreement is not None)
    unknown_at = threshold(infos, unknown_keep, flag_unknown)
    weights = fitted_weights(infos) if rule == WEIGHTED else None  # from stored CSVs: before any model loads
    voting = {"rule": rule, "weights": None if weights is None else dict(zip(names, weights)), "tta": tta}
    relative = [path.relative_to(folder).as_posix() for path in paths]

    def rows(positions: list[int], outputs: MemberOutputs) -> pd.DataFrame:  # indexed by position in `paths`
        frame = to_frame([relative[i] for i in positions], names, classes, outputs, tie, probs, min_agreement,
                         unknown_at, rule=rule, weights=weights)
        frame[FINGERPRINT] = outputs.fingerprints
        return frame.set_axis(pd.Index(positions, dtype="int64"))

    # Rank 0 exports any missing model.onnx (once), so every process runs each member on the same engine.
    engines = distributed.broadcast(world, distributed.run_on_main(
        world, lambda: member_engines(infos, engine, torch_device.type, quiet)))
    identity = None
    if world.is_main and (progress is not None or not shard.is_whole):  # hashes the weights: only when needed
        identity = run_identity.identity(folder, relative, infos, names[tie], lazy=lazy, probs=probs,
                                         min_agreement=min_agreement, shard=str(shard),
                                         engines=dict(zip(names, engines)), unknown=unknown_at.as_dict(),
                                         vote=voting)
    header = [*columns(names, classes, probs, min_agreement is not None), FINGERPRINT]
    finished = distributed.run_on_main(world, lambda: partial_rows.start(progress, identity, header, resume, quiet)
                                       if progress is not None else pd.DataFrame(columns=header))
    done = set(distributed.broadcast(world, None if finished is None else finished.index.tolist()))
    chosen = shard.positions(len(paths))
    todo = [i for i in chosen if i not in done]
    mine = [todo[k] for k in world.share(len(todo))]

    members = load_members(infos, torch_device, engines, threads=engine_threads(world.size), quiet=quiet)
    scope = ((f" of shard {shard}" if not shard.is_whole else "")
             + (f" in {world.size} processes" if world.active else ""))
    say(escape(f"Voting on {len(todo)} images{scope} with {', '.join(names)} (tie-breaker {names[tie]}) "
               f"on {torch_device}, {describe_engines(names, engines, engine, torch_device.type)}"), quiet)
    with partial_rows.RowWriter(progress, world.rank) if progress is not None else nullcontext() as writer:
        def keep(indices: list[int], outputs: MemberOutputs) -> None:  # each batch's rows, once voted on
            writer.append(rows([mine[k] for k in indices], outputs.take(indices)))

        outputs = predict_arrays([paths[i] for i in mine], members, tie, torch_device, batch_size=batch_size,
                                 workers=workers, lazy=lazy, quiet=quiet, on_batch=keep if writer else None, tta=tta,
                                 processes=world.size)
    parts = distributed.gather_to_main(world, rows(mine, outputs))
    if not world.is_main:
        return None
    frame = assemble([finished, *parts], chosen, names)
    frame.attrs.update(members=names, tie_breaker=names[tie], min_agreement=min_agreement, lazy=lazy,
                       identity=identity, folder=str(folder.resolve()), unknown=unknown_at.as_dict(), vote=voting,
                       fingerprints=frame.pop(FINGERPRINT).tolist())
    return frame


def predict_arrays(paths: list[Path], members: list[Member], tie_breaker: int, device: torch.device, *,
                   batch_size: int = 32, workers: int = 2, lazy: bool = False, quiet: bool = False,
                   on_batch: Callable[[list[int], MemberOutputs], None] | None = None, tta: int = 1,
                   processes: int = 1) -> MemberOutputs:
    """Run every member (or, with `lazy`, only those whose vote can still matter) on every readable file,
    each on `tta` views of it (its probabilities: their mean).

    `on_batch(indices, outputs)` is called after each batch with the indices (into `paths`) it finished.
    `processes` share this machine's cores (torchrun's): torch on the CPU takes this one's share, as
    ONNX Runtime does (`engine_threads`).
    """
    n_members, n_images, n_classes = len(members), len(paths), len(members[0].info.classes)
    probs = np.full((n_members, n_images, n_classes), np.nan, np.float32)
    ran = np.zeros((n_members, n_images), bool)
    errors: list[str | None] = [None] * n_images
    outputs = MemberOutputs(probs, ran, errors, [""] * n_images)
    loader = DataLoader(_Images(paths, [member.info.preprocessing for member in members], tta), batch_size=batch_size,
                        num_workers=workers, collate_fn=_collate,
                        pin_memory=device.type == "cuda")
    runner = _Runner(members, tie_breaker, device, lazy)
    batches = track(loader, total=n_images, description="Predicting", quiet=quiet, unit="images",
                    size=lambda batch: len(batch.rows) + len(batch.failed))
    with torch.inference_mode(), threads_for(0, processes) if device.type == "cpu" else nullcontext():
        for batch in batches:
            for index, fingerprint in batch.fingerprints:
                outputs.fingerprints[index] = fingerprint
            for index, reason in batch.failed:
                errors[index] = reason
            if len(batch.rows):
                runner(batch, probs, ran)
            if on_batch is not None:
                on_batch(sorted([*batch.rows.tolist(), *(index for index, _ in batch.failed)]), outputs)
    return outputs


class _Images(Dataset):
    """Item: (index, {pixel key: uint8 (3, size, size), or (tta, 3, size, size)} or None, reason or None,
    fingerprint)."""

    def __init__(self, paths: list[Path], preprocessings: list[Preprocessing], tta: int = 1):
        self.paths = paths
        # One per distinct size and crop; with tta, every view from the one decode, in this worker.
        self.crops = {p.pixel_key: p.eval_pixels() if tta == 1 else p.tta_pixels(tta) for p in preprocessings}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        fingerprint = file_fingerprint(self.paths[index])  # before decoding: a later change shows as one
        try:
            image = load_rgb(self.paths[index])
            return index, {key: crop(image) for key, crop in self.crops.items()}, None, fingerprint
        except UnreadableImage as exc:
            return index, None, exc.reason, fingerprint
        except Exception as exc:  # a file Pillow decodes but cannot resize must still not stop the run
            return index, None, f"cannot preprocess ({type(exc).__name__}: {str(exc)[:120]})", fingerprint


@dataclass
class _Batch:
    rows: np.ndarray  # int64: the readable images' indices into the file list
    pixels: dict[tuple, torch.Tensor]  # pixel key -> uint8 (len(rows), 3, size, size)
    failed: list[tuple[int, str]]  # (index, reason) for each unreadable file
    fingerprints: list[tuple[int, str]]  # (index, fingerprint) for every file

    def pin_memory(self) -> _Batch:  # called by DataLoader(pin_memory=True)
        return _Batch(self.rows, {key: x.pin_memory() for key, x in self.pixels.items()},
                      self.failed, self.fingerprints)


def _collate(items) -> _Batch:
    good = [(index, views) for index, views, _, _ in items if views is not None]
    failed = [(index, reason) for index, views, reason, _ in items if views is None]
    pixels = {key: torch.stack([views[key] for _, views in good]) for key in good[0][1]} if good else {}
    fingerprints = [(index, fingerprint) for index, _, _, fingerprint in items]
    return _Batch(np.array([index for index, _ in good], np.int64), pixels, failed, fingerprints)


class _Runner:
    """Runs the members on one batch, cheapest first, and writes into the (members, images, ...) arrays."""

    def __init__(self, members: list[Member], tie_breaker: int, device: torch.device, lazy: bool):
        self.members, self.device, self.lazy = members, device, lazy
        self.order = sorted(range(len(members)), key=lambda m: members[m].cost)
        self.tie_step = self.order.index(tie_breaker)  # `settled` counts members in the order they run
        self.pixel_keys = [m.info.preprocessing.pixel_key for m in members]

    def __call__(self, batch: _Batch, probs: np.ndarray, ran: np.ndarray) -> None:
        pending = np.arange(len(batch.rows))  # positions in the batch still waiting for a vote
        labels = np.zeros((len(self.order), len(batch.rows)), np.int64)
        for step, m in enumerate(self.order):
            pixels = batch.pixels[self.pixel_keys[m]]
            if len(pending) < len(batch.rows):
                pixels = pixels[torch.from_numpy(pending)]
            p = self._run(m, pixels)
            rows = batch.rows[pending]
            probs[m, rows], ran[m, rows] = p, True
            labels[step, pending] = p.argmax(axis=1)
            if self.lazy and step + 1 < len(self.order):
                done = settled(labels[: step + 1, pending], len(self.order), self.tie_step)
                pending = pending[~done]
                if not len(pending):
                    return

    def _run(self, m: int, pixels: torch.Tensor) -> np.ndarray:
        """A member's probabilities; for (images, views, 3, h, w) pixels, the mean over each image's views."""
        if pixels.dim() == 4:
            return self.members[m].run(pixels)
        images, views = pixels.shape[:2]
        return self.members[m].run(pixels.flatten(0, 1)).reshape(images, views, -1).mean(axis=1)

