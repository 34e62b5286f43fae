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
from quorum.data.preprocess import Preprocessing
from quorum.device import pick_device, threads_for
from quorum.errors import QuorumError
from quorum.models.bundle import ModelInfo
from quorum.models.engine import device_for_engine
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
from quorum.predict.options import PredictOptions
from quorum.predict.table import (
    FINGERPRINT,
    MemberOutputs,
    assemble,
    check_columns,
    columns,
    file_fingerprint,
    to_frame,
)
from quorum.predict.unknown import Neighbours, Threshold, load_neighbours, threshold
from quorum.predict.validation import fitted_vote_temperature, fitted_weights
from quorum.predict.vote import WEIGHTED, settled


def predict(folder: Path, model_dirs: list[Path], options: PredictOptions, *, quiet: bool = False,
            progress: Path | None = None, resume: bool = False) -> pd.DataFrame | None:
    """One row per image file under `folder` (or `options.shard`): the vote, each member's label, status and error.

    Under torchrun each process votes on its share and rank 0 returns the table; the others return None.
    With a `progress` folder, rows are kept there as they finish, and `resume` skips those it holds.
    `frame.attrs` holds `members`, `tie_breaker`, `min_agreement`, `lazy` and `unknown` for `table.closing_lines`,
    `vote` (the rule, its weights and tta) for the CSV's sidecar,
    `identity` (with `progress` or a shard: what makes a shard's CSV a part) and `folder` for the CSV's sidecar.
    """
    options.check()  # a mistake should cost seconds, not a model load or a decoded folder
    device = device_for_engine(options.engine, options.device)
    world = distributed.current(device)
    quiet = quiet or not world.is_main
    torch_device = pick_device(distributed.device_for(world, device))  # before any collective: nccl needs it
    plan = _plan(Path(folder), model_dirs, options, quiet)
    # Rank 0 exports any missing model.onnx (once), so every process runs each member on the same engine.
    engines = distributed.broadcast(world, distributed.run_on_main(
        world, lambda: member_engines(plan.infos, options.engine, torch_device.type, quiet)))
    identity, finished, todo = _start(plan, engines, world, progress, resume, quiet)
    mine = [todo[k] for k in world.share(len(todo))]
    members = load_members(plan.infos, torch_device, engines, threads=engine_threads(world.size), quiet=quiet)
    scope = ((f" of shard {options.shard}" if not options.shard.is_whole else "")
             + (f" in {world.size} processes" if world.active else ""))
    say(escape(f"Voting on {len(todo)} images{scope} with {', '.join(plan.names)} (tie-breaker {plan.tie_breaker}) "
               f"on {torch_device}, {describe_engines(plan.names, engines, options.engine, torch_device.type)}"), quiet)
    parts = distributed.gather_to_main(world, _run(plan, mine, members, torch_device, world, progress, quiet))
    if not world.is_main:
        return None
    return _assemble(plan, [finished, *parts], identity)


@dataclass(frozen=True)
class _Plan:
    """What a run will do, worked out before any model loads. A row's position is its file's index in `paths`."""
    folder: Path
    paths: list[Path]  # every image under `folder`, sorted
    relative: list[str]  # the same, as the CSV's `path` column writes them
    infos: list[ModelInfo]  # in name order, however they were given: the member columns come in one order
    tie: int  # the tie-breaker's index in `infos`
    unknown_at: Threshold
    neighbours: list[Neighbours] | None  # each member's training features, for unknown_score (None: entropy)
    weights: list[float] | None  # --vote weighted's, one per member
    vote_temperature: float  # the vote's own, on top of the members' (`vote.fit_vote_temperature`)
    options: PredictOptions

    @property
    def names(self) -> list[str]:
        return [info.path.name for info in self.infos]

    @property
    def tie_breaker(self) -> str:
        return self.names[self.tie]

    @property
    def chosen(self) -> list[int]:  # the positions this run (its shard) writes rows for
        return self.options.shard.positions(len(self.paths))

    @property
    def header(self) -> list[str]:
        options = self.options
        return [*columns(self.names, self.infos[0].classes, options.probs, options.min_agreement is not None),
                FINGERPRINT]

    @property
    def voting(self) -> dict:  # for the sidecar and `run_identity`
        weights = None if self.weights is None else dict(zip(self.names, self.weights))
        return {"rule": self.options.rule, "weights": weights, "tta": self.options.tta,
                "temperature": self.vote_temperature}

    def rows(self, positions: list[int], outputs: MemberOutputs) -> pd.DataFrame:
        """The rows of these positions, indexed by position."""
        options = self.options
        frame = to_frame([self.relative[i] for i in positions], self.names, self.infos[0].classes, outputs, self.tie,
                         options.probs, options.min_agreement, self.unknown_at, rule=options.rule, weights=self.weights,
                         vote_temperature=self.vote_temperature)
        frame[FINGERPRINT] = outputs.fingerprints
        return frame.set_axis(pd.Index(positions, dtype="int64"))


def _plan(folder: Path, model_dirs: list[Path], options: PredictOptions, quiet: bool) -> _Plan:
    """The files and the members, and every check that needs them but no model loaded."""
    scan = scan_images(folder)
    if not scan.images:
        found = f" ({scan.summary()})" if scan.skipped else ""
        raise QuorumError(f"no images in {folder}{found}: quorum reads every format Pillow opens, "
                          "e.g. .jpg, .png, .tif, .webp, .tga, .ppm")
    if scan.skipped:
        say(escape(f"Not images, so no rows: {scan.summary()} under {folder}"), quiet)
    infos = read_members(sorted(model_dirs, key=lambda path: Path(path).name))
    tie = tie_breaker_index(infos, options.tie_breaker)
    names = [info.path.name for info in infos]
    check_columns(names, infos[0].classes, options.probs, options.min_agreement is not None)
    neighbours, no_neighbours = load_neighbours(infos)
    unknown_at = threshold(infos, options.unknown_keep, options.flag_unknown, neighbours, no_neighbours)
    weights = fitted_weights(infos) if options.rule == WEIGHTED else None  # from stored CSVs: before any model loads
    vote_temperature = fitted_vote_temperature(infos, options.rule, weights)
    relative = [path.relative_to(folder).as_posix() for path in scan.images]
    return _Plan(folder, scan.images, relative, infos, tie, unknown_at, neighbours, weights, vote_temperature, options)


def _start(plan: _Plan, engines: list[str], world: distributed.World, progress: Path | None, resume: bool,
           quiet: bool) -> tuple[dict | None, pd.DataFrame | None, list[int]]:
    """The run's identity and the rows it finished before (both on rank 0 only), and the positions still to do."""
    identity = None
    if world.is_main and (progress is not None or not plan.options.shard.is_whole):  # hashes weights: only if needed
        identity = run_identity.identity(plan.folder, plan.relative, plan.infos, plan.options,
                                         tie_breaker=plan.tie_breaker, engines=dict(zip(plan.names, engines)),
                                         unknown=plan.unknown_at.as_dict(), vote=plan.voting)
    finished = distributed.run_on_main(world, lambda: partial_rows.start(progress, identity, plan.header, resume, quiet)
                                       if progress is not None else pd.DataFrame(columns=plan.header))
    done = set(distributed.broadcast(world, None if finished is None else finished.index.tolist()))
    return identity, finished, [i for i in plan.chosen if i not in done]


def _run(plan: _Plan, mine: list[int], members: list[Member], device: torch.device, world: distributed.World,
         progress: Path | None, quiet: bool) -> pd.DataFrame:
    """This process's rows (`mine`: positions), each batch's also kept in `progress` as soon as it is voted on."""
    options = plan.options
    with partial_rows.RowWriter(progress, world.rank) if progress is not None else nullcontext() as writer:
        def keep(indices: list[int], outputs: MemberOutputs) -> None:  # `indices` into `mine`
            writer.append(plan.rows([mine[k] for k in indices], outputs.take(indices)))

        outputs = predict_arrays([plan.paths[i] for i in mine], members, plan.tie, device,
                                 batch_size=options.batch_size, workers=options.workers, lazy=options.lazy, quiet=quiet,
                                 on_batch=keep if writer else None, tta=options.tta, processes=world.size,
                                 neighbours=plan.neighbours)
    return plan.rows(mine, outputs)


def _assemble(plan: _Plan, parts: list[pd.DataFrame], identity: dict | None) -> pd.DataFrame:
    """Every process's rows and those a resumed run had finished, in the folder's order, with what the
    closing lines and the sidecar need in `attrs`."""
    frame = assemble(parts, plan.chosen, plan.names)
    frame.attrs.update(members=plan.names, tie_breaker=plan.tie_breaker, min_agreement=plan.options.min_agreement,
                       lazy=plan.options.lazy, identity=identity, folder=str(plan.folder.resolve()),
                       unknown=plan.unknown_at.as_dict(), unknown_passed=plan.unknown_at.passed, vote=plan.voting,
                       fingerprints=frame.pop(FINGERPRINT).tolist())
    return frame


def predict_arrays(paths: list[Path], members: list[Member], tie_breaker: int, device: torch.device, *,
                   batch_size: int = 32, workers: int = 2, lazy: bool = False, quiet: bool = False,
                   on_batch: Callable[[list[int], MemberOutputs], None] | None = None, tta: int = 1,
                   processes: int = 1, neighbours: list[Neighbours] | None = None) -> MemberOutputs:
    """Run every member (or, with `lazy`, only those whose vote can still matter) on every readable file,
    each on `tta` views of it (its probabilities and features: their mean). With `neighbours` (one per
    member), also each member's distance from its training images (`unknown.Neighbours`).

    `on_batch(indices, outputs)` is called after each batch with the indices (into `paths`) it finished.
    `processes` share this machine's cores (torchrun's): torch on the CPU takes this one's share, as
    ONNX Runtime does (`engine_threads`).
    """
    n_members, n_images, n_classes = len(members), len(paths), len(members[0].info.classes)
    probs = np.full((n_members, n_images, n_classes), np.nan, np.float32)
    ran = np.zeros((n_members, n_images), bool)
    errors: list[str | None] = [None] * n_images
    distances = None if neighbours is None else np.full((n_members, n_images), np.nan, np.float32)
    outputs = MemberOutputs(probs, ran, errors, [""] * n_images, distances)
    loader = DataLoader(_Images(paths, [member.info.preprocessing for member in members], tta), batch_size=batch_size,
                        num_workers=workers, collate_fn=_collate,
                        pin_memory=device.type == "cuda")
    runner = _Runner(members, tie_breaker, device, lazy, neighbours)
    batches = track(loader, total=n_images, description="Predicting", quiet=quiet, unit="images",
                    size=lambda batch: len(batch.rows) + len(batch.failed))
    with torch.inference_mode(), threads_for(0, processes) if device.type == "cpu" else nullcontext():
        for batch in batches:
            for index, fingerprint in batch.fingerprints:
                outputs.fingerprints[index] = fingerprint
            for index, reason in batch.failed:
                errors[index] = reason
            if len(batch.rows):
                runner(batch, outputs)
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

    def __init__(self, members: list[Member], tie_breaker: int, device: torch.device, lazy: bool,
                 neighbours: list[Neighbours] | None = None):
        self.members, self.device, self.lazy, self.neighbours = members, device, lazy, neighbours
        self.order = sorted(range(len(members)), key=lambda m: members[m].cost)
        self.tie_step = self.order.index(tie_breaker)  # `settled` counts members in the order they run
        self.pixel_keys = [m.info.preprocessing.pixel_key for m in members]

    def __call__(self, batch: _Batch, outputs: MemberOutputs) -> None:
        pending = np.arange(len(batch.rows))  # positions in the batch still waiting for a vote
        labels = np.zeros((len(self.order), len(batch.rows)), np.int64)
        for step, m in enumerate(self.order):
            pixels = batch.pixels[self.pixel_keys[m]]
            if len(pending) < len(batch.rows):
                pixels = pixels[torch.from_numpy(pending)]
            p, features = self._run(m, pixels)
            rows = batch.rows[pending]
            outputs.probs[m, rows], outputs.ran[m, rows] = p, True
            if self.neighbours is not None:
                outputs.distances[m, rows] = self.neighbours[m].score(features)
            labels[step, pending] = p.argmax(axis=1)
            if self.lazy and step + 1 < len(self.order):
                done = settled(labels[: step + 1, pending], len(self.order), self.tie_step)
                pending = pending[~done]
                if not len(pending):
                    return

    def _run(self, m: int, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """A member's probabilities, and its features when `neighbours` need them (else None); for
        (images, views, 3, h, w) pixels, their means over each image's views."""
        views = pixels.shape[1] if pixels.dim() == 5 else 0
        flat = pixels.flatten(0, 1) if views else pixels
        run = self.members[m].run
        probs, features = run.with_features(flat) if self.neighbours is not None else (run(flat), None)
        if views:
            probs = probs.reshape(-1, views, probs.shape[1]).mean(axis=1)
            features = None if features is None else features.reshape(-1, views, features.shape[1]).mean(axis=1)
        return probs, features
