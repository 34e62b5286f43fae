"""`quorum finetune`: the two-phase recipe, from a labelled folder to a finished model bundle.

1. Phase 1 (the first `unfreeze_after` epochs): the backbone is frozen except its last
   `train_blocks` blocks; the new head learns at `lr`. A backbone without pretrained weights
   skips it by default: frozen random features teach the head nothing.
2. Phase 2: everything trains at the lower `finetune_lr`, each phase with its own warm-up. A
   pretrained backbone's BatchNorm keeps normalising with its running statistics (`norm_stats`),
   so the features phase 1 fitted the head to do not change at the unfreeze.
3. The final epoch is kept (`keep`: last), or the one best on validation (best). The run works in
   `models/.<name>.partial/` and is moved to `models/<name>/` only when finished, so a model folder is
   never half-written.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path

import torch
from rich.markup import escape

from quorum import distributed, files
from quorum.console import say
from quorum.data.pseudo_labels import PseudoLabels, SoftTargets, read_pseudo_labels, read_soft_targets
from quorum.data.split import SPLIT_FILE, SPLIT_SETTINGS, Split, find_unreadable, load_or_make_split
from quorum.device import pick_device, threads_for
from quorum.errors import QuorumError
from quorum.models import bundle, onnx_export, weights
from quorum.models.backbone import Backbone
from quorum.models.registry import get_backbone
from quorum.train import checkpoint
from quorum.train.recipe import Recipe
from quorum.train.run import TrainingRun


def finetune(recipe: Recipe, resume: bool = False, resplit: bool = False, quiet: bool = False,
             on_epoch_end: Callable[[int], None] | None = None) -> Path:
    """Run the recipe and return the finished model's folder (under torchrun: on every process).

    Rank 0 holds `<models_dir>/.<name>.lock` throughout: a second run of the same name would take this
    one's folder for an interrupted run and discard it, so it stops with one Error line instead."""
    world = distributed.current(recipe.device)
    backbone = get_backbone(recipe.backbone)
    asked, recipe = recipe, recipe.resolve(backbone.native_size, backbone.pretrained_available)
    models_dir = Path(recipe.models_dir)
    fresh = not models_dir.exists()
    busy = (f"another quorum finetune is making {models_dir / recipe.name} now: wait for it to finish, "
            "or give another --name")
    try:
        with files.exclusive(bundle.lock_path(models_dir / recipe.name), busy) if world.is_main else nullcontext():
            return _finetune(recipe, asked, backbone, world, resume, resplit, quiet or not world.is_main, on_epoch_end)
    finally:
        if fresh:  # the lock made it: a run that failed leaves no empty models dir behind
            with suppress(OSError):
                models_dir.rmdir()


def _finetune(recipe: Recipe, asked: Recipe, backbone: Backbone, world: distributed.World, resume: bool, resplit: bool,
              quiet: bool, on_epoch_end: Callable[[int], None] | None) -> Path:
    """`recipe` resolved; `asked` as given, which --resume compares (`checkpoint.resumed_recipe`)."""
    models_dir = Path(recipe.models_dir)
    work_dir, final_dir = models_dir / f".{recipe.name}.partial", models_dir / recipe.name
    if (final_dir.exists() or final_dir.is_symlink()) and not bundle.is_model_folder(final_dir):
        raise QuorumError(f"{final_dir} exists and is not a quorum model: the finished run would replace it; move it "
                          "away, or give another --name")
    old_dir = _old_dir(final_dir)
    if (old_dir.exists() or old_dir.is_symlink()) and not bundle.is_model_folder(old_dir):
        raise QuorumError(f"{old_dir} exists and is not a model quorum set aside: the finished run would delete it; "
                          "move it away, or give another --name")
    if (work_dir.exists() or work_dir.is_symlink()) and not _unfinished_run(work_dir):
        raise QuorumError(f"{work_dir} exists and is not a run quorum left unfinished: move it away, or give another "
                          "--name")
    if resume and distributed.broadcast(world, (work_dir / bundle.MODEL_JSON).is_file()):  # killed after training
        if world.is_main:
            say(f"Finishing {recipe.name}: it had finished training; moving it into place", quiet)
            if not onnx_export.is_current(work_dir):  # killed while exporting
                _export_onnx(work_dir, quiet)
            _replace_dir(work_dir, final_dir)
        distributed.barrier(world)
        return final_dir
    state = checkpoint.load(work_dir) if resume else None
    if resume:
        before = state["recipe"]["epochs"]
        recipe = checkpoint.resumed_recipe(state["recipe"], asked, done=state["epoch"] + 1)
        longer = f" (was {before})" if recipe.epochs != before else ""
        say(f"Resuming {recipe.name} after epoch {state['epoch'] + 1} of {recipe.epochs}{longer}", quiet)
    if recipe.weights == "none" and recipe.frozen_epochs > 0:
        say(f"[yellow]Warning: {backbone.name} starts from random weights, "
            f"yet --unfreeze-after {recipe.unfreeze_after} "
            f"keeps it frozen for {recipe.frozen_epochs} epoch(s): a random backbone's features carry no knowledge "
            "for the head to use. Leave --unfreeze-after out (or give 0) to train it whole from the start.[/yellow]")
    if backbone.fixed_size and recipe.image_size != backbone.native_size:
        raise QuorumError(f"{backbone.name} only takes {backbone.native_size} px images: "
                          f"use --image-size {backbone.native_size}")

    device = pick_device(distributed.device_for(world, recipe.device))
    split, split_is_new = shared_split(recipe, models_dir, resplit, world, quiet)
    with _forget_new_split(split_is_new and world.is_main, models_dir):  # e.g. offline: no weights
        torch.manual_seed(recipe.seed)  # a random-init head (and --weights none) is the same every run
        model = weights.build(backbone, len(split.classes), "none" if resume else recipe.weights)
        if world.is_main:  # said once the weights are there: offline, the split is forgotten and made again
            report_split(split, split_is_new, models_dir, quiet)
        if recipe.train_blocks > len(model.blocks):
            raise QuorumError(f"--train-blocks {recipe.train_blocks} is more than {backbone.name}'s "
                              f"{len(model.blocks)} blocks")
        model.to(device)
        pseudo, soft = pseudo_labels(recipe, split, quiet), soft_targets(recipe, split, quiet)
        run = TrainingRun(recipe, split, model, device, work_dir, world, quiet, pseudo, soft)
    if not resume and world.is_main and work_dir.exists():
        _discard(work_dir)  # an interrupted run the user chose not to resume
    if state is not None:
        run.restore(state)
    with threads_for(recipe.workers if device.type == "cpu" else 0, world.size):
        for epoch in range(run.next_epoch, recipe.epochs):
            run.epoch(epoch)
            if on_epoch_end is not None:
                on_epoch_end(epoch)
    if world.is_main:
        run.finish()
        _export_onnx(work_dir, quiet)
        _replace_dir(work_dir, final_dir)
        run.print_finished_model(final_dir)
    distributed.barrier(world)  # no process reports success before the model is in place
    return final_dir


def shared_split(recipe: Recipe, models_dir: Path, resplit: bool, world: distributed.World,
                 quiet: bool) -> tuple[Split, bool]:
    """Rank 0 makes or checks the split; the other processes then read the same file. (split, is_new)"""
    def make_or_check() -> tuple[Split, bool]:
        split, is_new = load_or_make_split(Path(recipe.data), models_dir, recipe.val_fraction, recipe.seed,
                                           resplit=resplit, workers=recipe.workers)
        drawn = split.drawn_with
        if not is_new and drawn.get("val_fraction") is not None and (drawn["val_fraction"], drawn["seed"]) != (
                recipe.val_fraction, recipe.seed):  # the folder's own train/ and val/ serve any values
            say(f"[yellow]The split reused was drawn with --val-fraction {drawn['val_fraction']} "
                f"--seed {drawn['seed']}, "
                f"not the --val-fraction {recipe.val_fraction} --seed {recipe.seed} given (model.json records the "
                "split's): add --resplit to draw it again, then fine-tune the other models again[/yellow]")
        return split, is_new

    made = distributed.run_on_main(world, make_or_check)
    if not world.is_main:
        made = load_or_make_split(Path(recipe.data), models_dir, recipe.val_fraction, recipe.seed)[0], False
    return made


@contextmanager
def _forget_new_split(is_new: bool, models_dir: Path):
    """A split made by a run that fails before it trains is removed: the next run makes it afresh
    (perhaps with other options) instead of tripping over a split no model uses."""
    try:
        yield
    except BaseException:
        if is_new:
            (models_dir / SPLIT_FILE).unlink(missing_ok=True)
            (models_dir / SPLIT_SETTINGS).unlink(missing_ok=True)
            with suppress(OSError):
                models_dir.rmdir()  # only if the split was all it held
        raise


def pseudo_labels(recipe: Recipe, split: Split, quiet: bool) -> PseudoLabels | None:
    """The agreed rows of `recipe.pseudo_labels`, for the training share only: never validation, so the
    scores stay honest, and never a file that is already labelled."""
    if recipe.pseudo_labels is None:
        return None
    pseudo = read_pseudo_labels(Path(recipe.pseudo_labels), split.classes, recipe.pseudo_min_agreement)
    unlabelled = _not_labelled(pseudo.items, split, f"--pseudo-labels {recipe.pseudo_labels}")
    pseudo = dataclasses.replace(pseudo, items=_readable(unlabelled, recipe.workers, "--pseudo-labels"),
                                 labelled=len(pseudo.items) - len(unlabelled))
    left = "; ".join(f"{count} agreed rows {why} were left out" for count, why in (
        (pseudo.no_class, "of no known class"),
        (pseudo.labelled, "whose image the labelled folder holds (a person's label wins)"),
        (pseudo.gone, f"whose file is no longer in {pseudo.folder}")) if count)
    say(f"Pseudo-labels: {len(pseudo.items)} of {pseudo.rows} rows of {recipe.pseudo_labels} (agreement at least "
        f"{recipe.pseudo_min_agreement:g}{', not flagged unknown' if pseudo.no_class else ''}) join the "
        f"{len(split.items('train'))} training images; validation is unchanged" + (f"; {left}" if left else ""), quiet)
    return pseudo


def soft_targets(recipe: Recipe, split: Split, quiet: bool) -> SoftTargets | None:
    """Every readable row of `recipe.distill` with the ensemble's probabilities, for the training share only."""
    if recipe.distill is None:
        return None
    soft = read_soft_targets(Path(recipe.distill), split.classes)
    unlabelled = _not_labelled(soft.items, split, f"--distill {recipe.distill}")
    readable = _readable(unlabelled, recipe.workers, "--distill")
    soft = dataclasses.replace(soft, items=readable, left_out={
        **soft.left_out, "unreadable": soft.left_out["unreadable"] + len(unlabelled) - len(readable),
        "labelled": len(soft.items) - len(unlabelled)})
    left = ", ".join(f"{count} {why}" for why, count in soft.left_out.items() if count)
    say(f"Distilling {', '.join(soft.teachers) or 'the ensemble'}: {len(soft.items)} of {soft.rows} rows of "
        f"{recipe.distill} join the {len(split.items('train'))} training images with the ensemble's probabilities"
        f"{f' (left out: {left})' if left else ''}; validation is unchanged", quiet)
    return soft


def _readable(items: list[tuple], workers: int, option: str) -> list[tuple]:
    """The items whose file decodes. Checked once now, as the split's files are: training would drop an
    unreadable one silently, and model.json must count only the images that really joined."""
    reasons = find_unreadable(Path(), [path for path, _ in items], workers)
    unreadable = [f"{path}: {reason}" for (path, _), reason in zip(items, reasons) if reason]
    if unreadable:
        say(escape(f"Left out {len(unreadable)} {option} file(s) that cannot be read (e.g. {unreadable[0]})"))
    return [item for item, reason in zip(items, reasons) if not reason]


def _not_labelled(items: list[tuple], split: Split, source: str) -> list[tuple]:
    """The items whose image is not in the labelled folder. A CSV of the labelled folder itself is refused; an
    image a person has labelled since (moved in: the same file, since `quorum review` hard-links; or copied in:
    the same bytes) is left out, so its person's label is the only one it trains with."""
    labelled = [split.root / path for path in split.table.path]
    inside = [path for path, _ in items if files.inside(Path(path), split.root)]
    if inside:
        raise QuorumError(f"{source} has {len(inside)} file(s) of the labelled folder {split.root} "
                          f"(e.g. {inside[0]}): predict on a folder outside it")
    # One stat per labelled file: its identity (device, inode) and its size; a file gone since matches nothing.
    same_file, by_size, digests = set(), {}, {}  # digests: size -> the SHA-256 of its labelled files, made when asked
    for path in labelled:
        with suppress(OSError):
            stat = path.stat()
            same_file.add((stat.st_dev, stat.st_ino))
            by_size.setdefault(stat.st_size, []).append(path)

    def same_bytes(size: int) -> set[str]:
        if size not in digests:
            digests[size] = set()
            for twin in by_size[size]:
                with suppress(OSError):
                    digests[size].add(files.sha256(twin))
        return digests[size]

    def is_labelled(path: Path) -> bool:  # hashed only where a size matches: most images differ in size already
        try:
            stat = path.stat()
            return (stat.st_dev, stat.st_ino) in same_file or (
                stat.st_size in by_size and files.sha256(path) in same_bytes(stat.st_size))
        except OSError:
            return False  # gone or unreadable: the readable check names it

    return [item for item in items if not is_labelled(Path(item[0]))]


def report_split(split: Split, is_new: bool, models_dir: Path, quiet: bool) -> None:
    counts = split.table.subset.value_counts()
    verb = "Made" if is_new else "Reusing"
    say(f"{verb} the split {models_dir / 'split.csv'}: {counts.get('train', 0)} train, {counts.get('val', 0)} val "
        f"images, {len(split.classes)} classes", quiet)
    if split.skipped:
        say(escape(f"Not images, so left out: {split.skipped} under {split.root}"), quiet)
    unreadable = split.unreadable
    if len(unreadable) and is_new:
        say(f"[yellow]Left out {len(unreadable)} unreadable file(s):[/yellow]")
        for path, reason in zip(unreadable.path, unreadable.reason):
            say(f"  {path}: {reason}")
    elif len(unreadable):
        say(f"[yellow]{len(unreadable)} unreadable file(s) left out "
            f"(listed in {models_dir / 'split.csv'})[/yellow]", quiet)


def _unfinished_run(work_dir: Path) -> bool:
    """What a run leaves in `.<name>.partial`: a model's files, a checkpoint, or (killed before its first epoch)
    nothing but the temporary files of a write cut short. Anything else there is the user's."""
    if not work_dir.is_dir() or work_dir.is_symlink():
        return False
    return bundle.is_model_folder(work_dir) or (work_dir / checkpoint.CHECKPOINT).is_file() or all(
        path.name.startswith(".") and path.name.endswith(".tmp") for path in work_dir.iterdir())


def _discard(work_dir: Path) -> None:
    """Remove an interrupted run, saying so: it may be hours of training."""
    try:
        state = checkpoint.load(work_dir)
        done = f"{state['epoch'] + 1} of {state['recipe']['epochs']} epochs done"
    except QuorumError:
        done = "finished, not yet moved into place" if (work_dir / bundle.MODEL_JSON).is_file() else "no finished epoch"
    say(escape(f"Discarding the interrupted run in {work_dir} ({done}): add --resume to continue such a run instead"))
    shutil.rmtree(work_dir)


def _export_onnx(work_dir: Path, quiet: bool) -> None:
    """model.onnx beside the weights, for ONNX Runtime; a model it cannot export still runs on torch."""
    say("Exporting model.onnx for quorum predict's ONNX Runtime engine", quiet)
    try:
        onnx_export.export_onnx(work_dir)
    except onnx_export.OnnxUnavailable as exc:
        say(f"[yellow]No model.onnx ({exc}): quorum predict will run this model on torch[/yellow]")


def _old_dir(target: Path) -> Path:
    """Where the previous model waits while the new one moves into place."""
    return target.with_name(f".{target.name}.old")


def _replace_dir(new: Path, target: Path) -> None:
    """Swap the finished run into place; the previous model stays whole until the last moment.

    Killed between the two renames, no model folder exists for an instant: `new` is still
    complete, and `--resume` finishes the swap."""
    old = _old_dir(target)
    if old.exists() and target.exists():  # a swap that finished, but not its clean-up
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    new.rename(target)
    files.fsync(target.parent)  # both renames reach the disk before the old model goes
    if old.exists():
        shutil.rmtree(old)
