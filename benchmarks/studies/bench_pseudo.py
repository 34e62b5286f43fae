"""One pseudo-label round on Fashion-MNIST, measured on a disjoint test set: before and after.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/studies/bench_pseudo.py [--labelled-per-class 40]
        [--unlabelled 3000] [--test-per-class 100] [--epochs 8] [--unfreeze-after 4] [--min-agreement 1.0]

1. Slices (from Debian's dataset-fashion-mnist, made once under benchmarks/data/pseudo/):
   `labelled/<class>/` from the train images, `unlabelled/` from other train images (their labels
   are kept only to count how right the pseudo-labels were), `test/<class>/` from t10k.
2. Round 0: three members (EfficientNet-Lite0/1/2 from the offline ImageNet weights, at 64, 72
   and 80 px) fine-tuned on `labelled/` with `quorum finetune`; `quorum predict unlabelled/`.
3. Round 1: the same three recipes again from the same ImageNet weights, on the same split, with
   `--pseudo-labels` of that CSV.
4. Both rounds' members and vote scored on `test/` (`quorum report --data test`'s sources), plus
   the trust table of each vote on validation and on test.

A study: it prints a section for this one run (and keeps it as data/pseudo/[TAG/]section-<level>.md);
the "Pseudo-labels" section of RESULTS.md combines three runs by hand (the commands are there). Its
slices are its own (not fashion_mnist.make_slice's), so that those figures can be measured again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, where the shared modules are
import common
from common import WEIGHTS, quorum
from fashion_mnist import CLASS_NAMES, DEBIAN_SOURCE, read_split
from quorum.predict.members import load_members, read_members, tie_breaker_index
from quorum.predict.trust_table import trust_table
from quorum.predict.vote import vote
from quorum.report.sources import read_validation, run_on_folder, stack_validation

DATA = common.DATA / "pseudo"
MEMBERS = [("tf_efficientnet_lite0", 64), ("tf_efficientnet_lite1", 72), ("tf_efficientnet_lite2", 80)]


def make_slices(labelled_per_class: int, unlabelled: int, test_per_class: int, seed: int = 12) -> None:
    """Disjoint slices, written once; a different size asks for a different folder."""
    marker = DATA / "slices.json"
    wanted = {"labelled_per_class": labelled_per_class, "unlabelled": unlabelled, "test_per_class": test_per_class,
              "seed": seed}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return
    shutil.rmtree(DATA, ignore_errors=True)
    images, labels = read_split(DEBIAN_SOURCE, "train")
    test_images, test_labels = read_split(DEBIAN_SOURCE, "t10k")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    labelled = np.concatenate([order[labels[order] == c][:labelled_per_class] for c in range(len(CLASS_NAMES))])
    rest = np.setdiff1d(order, labelled)
    pool = rng.permutation(rest)[:unlabelled]
    for index in labelled:
        _save(images[index], DATA / "labelled" / CLASS_NAMES[labels[index]] / f"{index:05d}.png")
    truth = []
    for number, index in enumerate(pool):
        _save(images[index], DATA / "unlabelled" / f"u{number:05d}.png")
        truth.append((f"u{number:05d}.png", CLASS_NAMES[labels[index]]))
    pd.DataFrame(truth, columns=["path", "label"]).to_csv(DATA / "unlabelled_labels.csv", index=False)
    test_order = rng.permutation(len(test_labels))
    for c, name in enumerate(CLASS_NAMES):
        for index in test_order[test_labels[test_order] == c][:test_per_class]:
            _save(test_images[index], DATA / "test" / name / f"{index:05d}.png")
    marker.write_text(json.dumps(wanted))


def _save(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "L").save(path)


def train_round(models_dir: Path, args, pseudo: Path | None) -> dict[str, float]:
    seconds = {}
    for backbone, size in MEMBERS:
        name = f"{backbone.removeprefix('tf_efficientnet_')}-{size}"
        if (models_dir / name / "model.json").is_file():
            continue
        extra = ["--pseudo-labels", pseudo, "--pseudo-min-agreement", args.min_agreement] if pseudo else []
        seconds[name] = quorum("finetune", f"timm/{backbone}", "--weights", WEIGHTS / f"{backbone}.safetensors",
                               "--data", DATA / "labelled", "--image-size", size, "--epochs", args.epochs,
                               "--unfreeze-after", args.unfreeze_after, "--models-dir", models_dir, "--name", name,
                               "--workers", 0, "--quiet", *extra)
    return seconds


def score(models_dir: Path) -> dict:
    """Each member and the vote on test/, and the vote's trust table on validation and on test."""
    infos = read_members(sorted(models_dir / name for name in os.listdir(models_dir)
                                if (models_dir / name / "model.json").is_file()))
    tie = tie_breaker_index(infos)
    cpu = torch.device("cpu")
    test = run_on_folder(DATA / "test", load_members(infos, cpu), tie, cpu, workers=0, quiet=True)
    test_vote = vote(test.probs, tie)
    val = stack_validation(infos, [read_validation(info) for info in infos])
    val_vote = vote(val.probs, tie)
    return {
        "members": {info.path.name: float((test.probs[m].argmax(1) == test.y_true).mean())
                    for m, info in enumerate(infos)},
        "val_members": {info.path.name: float(info.val_accuracy) for info in infos},
        "vote": float((test_vote.label == test.y_true).mean()),
        "val_vote": float((val_vote.label == val.y_true).mean()),
        "trust_val": trust_table(val.y_true, val_vote), "trust_test": trust_table(test.y_true, test_vote),
        "test_images": len(test.y_true), "val_images": len(val.y_true), "tie_breaker": infos[tie].path.name,
    }


def pseudo_quality(preds: Path, min_agreement: float) -> dict:
    frame = pd.read_csv(preds)
    truth = pd.read_csv(DATA / "unlabelled_labels.csv").set_index("path")["label"]
    right = frame["prediction"] == frame["path"].map(truth)
    taken = frame["agreement"] >= min_agreement - 0.005
    return {"rows": len(frame), "taken": int(taken.sum()), "taken_right": float(right[taken].mean()),
            "all_right": float(right.mean())}


def markdown(args, before: dict, after: dict, quality: dict, seconds: dict, commands: list[str]) -> str:
    lines = ["## Pseudo-labels", "",
             f"Fashion-MNIST (Debian `dataset-fashion-mnist`, 28x28 grey, upscaled by each member's preprocessing): "
             f"{args.labelled_per_class} labelled images per class ({args.labelled_per_class * 10}; the shared split "
             f"keeps 20% for validation), {args.unlabelled} unlabelled train images, a disjoint test set of "
             f"{before['test_images']} t10k images. Members: EfficientNet-Lite0/1/2 from the offline ImageNet weights "
             f"at {', '.join(str(s) for _, s in MEMBERS)} px, {args.epochs} epochs ({args.unfreeze_after} frozen), "
             f"one torch thread, OMP_WAIT_POLICY=PASSIVE. Round 1 retrains the same recipes from the same ImageNet "
             f"weights with `--pseudo-labels` (agreement at least {args.min_agreement:g}). "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; `python benchmarks/studies/bench_pseudo.py` "
             f"took {seconds['total'] / 60:.0f} min.", "",
             f"Pseudo-labels taken: {quality['taken']} of {quality['rows']} rows "
             f"({quality['taken'] / quality['rows']:.0%}); {quality['taken_right']:.1%} of them were right "
             f"(the vote on all rows: {quality['all_right']:.1%}).", "",
             "| model | test before | test after | change | val before | val after |", "|---|---|---|---|---|---|"]
    for name in before["members"]:
        b, a = before["members"][name], after["members"][name]
        lines.append(f"| {name} | {b:.1%} | {a:.1%} | {100 * (a - b):+.1f} | {before['val_members'][name]:.1%} | "
                     f"{after['val_members'][name]:.1%} |")
    b, a = before["vote"], after["vote"]
    lines += [f"| **vote** (tie-breaker {before['tie_breaker']} / {after['tie_breaker']}) | {b:.1%} | {a:.1%} | "
              f"{100 * (a - b):+.1f} | {before['val_vote']:.1%} | {after['val_vote']:.1%} |", ""]
    for title, key, images in (("validation", "trust_val", before["val_images"]), ("test", "trust_test", None)):
        lines += [f"Trust table of the round-0 vote on {title} ({images or before['test_images']} images): "
                  "share of images and the vote's accuracy on them.", "",
                  "| group | level | images | coverage | accuracy |", "|---|---|---|---|---|"]
        for row in before[key].itertuples():
            accuracy = "-" if row.images == 0 else f"{row.accuracy:.1%}"
            lines.append(f"| {row.group} | {row.level} | {row.images} | {row.coverage:.1%} | {accuracy} |")
        lines.append("")
    lines += ["Commands (as run):", "", "```sh", *commands, "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labelled-per-class", type=int, default=40)
    parser.add_argument("--unlabelled", type=int, default=3000)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--unfreeze-after", type=int, default=4)
    parser.add_argument("--min-agreement", type=float, default=1.0)
    parser.add_argument("--tag", default="", help="keep this run's models and CSV apart, under data/pseudo/TAG/")
    args = parser.parse_args()
    start = time.perf_counter()
    make_slices(args.labelled_per_class, args.unlabelled, args.test_per_class)
    base = DATA / args.tag if args.tag else DATA
    before_dir, after_dir = base / "models-before", base / f"models-after-{args.min_agreement:g}"
    preds = base / "preds.csv"
    seconds = train_round(before_dir, args, None)
    if not preds.is_file():
        seconds["predict"] = quorum("predict", DATA / "unlabelled", "--models-dir", before_dir, "--out", preds,
                                    "--workers", 0, "--quiet")
    after_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(before_dir / "split.csv", after_dir / "split.csv")  # the same validation images
    seconds.update({f"{k} (pseudo)": v for k, v in train_round(after_dir, args, preds).items()})
    before, after = score(before_dir), score(after_dir)
    seconds["total"] = time.perf_counter() - start
    quality = pseudo_quality(preds, args.min_agreement)
    commands = [f"OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/studies/bench_pseudo.py "
                f"--labelled-per-class {args.labelled_per_class} --unlabelled {args.unlabelled} "
                f"--test-per-class {args.test_per_class} --epochs {args.epochs} --unfreeze-after {args.unfreeze_after} "
                f"--min-agreement {args.min_agreement:g}" + (f" --tag {args.tag}" if args.tag else ""),
                "# which runs, per member (lite0-64, lite1-72, lite2-80):",
                "quorum finetune timm/tf_efficientnet_lite0 "
                "--weights ../shared/weights/tf_efficientnet_lite0.safetensors "
                f"--data labelled --image-size 64 --epochs {args.epochs} --unfreeze-after {args.unfreeze_after}",
                "quorum predict unlabelled --out preds.csv",
                "quorum finetune ... (the same) --pseudo-labels preds.csv "
                f"--pseudo-min-agreement {args.min_agreement:g}",
                *(f"# {name}: {value:.0f} s" for name, value in seconds.items())]
    text = markdown(args, before, after, quality, seconds, commands)
    print(text)
    (base / f"section-{args.min_agreement:g}.md").write_text(text)


if __name__ == "__main__":
    main()
