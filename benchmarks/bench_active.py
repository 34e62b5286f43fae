"""Which images to label next (issue 21, part a): does `review --budget --rank disagreement` pick images worth
more than a random pick of the same size?

    python benchmarks/bench_active.py [--draws 0 1 2] [--budget 100] [--jobs 2] [--out FILE] [--no-write]

Per draw of Fashion-MNIST (benchmarks/fashion_mnist.py: 30 labelled images per class, as sample_data has,
3,000 unlabelled, 2,000 test):
1. The committee: EfficientNet-Lite0/1/2 at 96 px, 4 frozen + 4 unfrozen epochs, offline ImageNet weights,
   each `quorum finetune` in its own process on one thread; then `quorum predict UNLABELLED --probs`.
2. Each ranking picks `--budget` rows from that CSV with the code `quorum review --budget` runs
   (`quorum.predict.ranking.select`); a simulated person labels them from the data set's own labels.
3. Lite0 is fine-tuned again on the labelled training share plus those images (the validation share
   unchanged, given as DATA/train and DATA/val), and scored on the test images with `quorum predict`.
The figure: test accuracy per ranking, and disagreement's gain over random, per draw and on the mean.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from common import DATA, WEIGHTS, finetune_lite, marked, output_args, publish, quorum, step
from fashion_mnist import make_slice
from quorum.predict.ranking import select
from quorum.predict.table import read_predictions

RUNS = DATA / "active"
RANKS = ("disagreement", "margin", "random")


def accuracy(model_dir: Path, test: Path) -> float:
    out = model_dir.parent / f"{model_dir.name}-test.csv"
    if not out.is_file():
        quorum("predict", str(test), "--out", str(out), "--models-dir", str(model_dir.parent), "--model",
               model_dir.name, "-q")
    frame = read_predictions(out)
    return float((frame["prediction"] == frame["path"].str.split("/").str[0]).mean())


def with_new_labels(committee: Path, labelled: Path, unlabelled: Path, truth: dict[str, str], chosen: list[str],
                    out: Path) -> Path:
    """DATA/train (the split's training share plus the chosen images, with their true labels) and DATA/val."""
    if out.is_dir():
        return out
    split = pd.read_csv(committee / "split.csv", keep_default_na=False, dtype=str)
    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    for path, label, subset in zip(split.path, split.label, split.subset):
        (work / subset / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(labelled / path, work / subset / label / Path(path).name)
    for path in chosen:
        shutil.copy(unlabelled / path, work / "train" / truth[path] / f"new-{Path(path).name}")
    work.rename(out)
    return out


def run_draw(draw: int, budget: int, jobs: int, weights_dir: Path) -> dict[str, float]:
    data = make_slice(30, 200, 300, draw=draw)
    root = RUNS / f"draw{draw}"
    committee = root / "committee"
    with ThreadPoolExecutor(jobs) as pool:
        members = list(pool.map(lambda n: finetune_lite(committee, f"lite{n}", n, data.train, weights_dir), range(3)))
    preds = root / "unlabelled.csv"
    if not preds.is_file():
        quorum("predict", str(data.unlabelled), "--out", str(preds), "--models-dir", str(committee), "--probs", "-q")
    frame = read_predictions(preds)
    truth = dict(pd.read_csv(data.unlabelled_labels, keep_default_na=False, dtype=str).itertuples(index=False))
    folders = {rank: with_new_labels(committee, data.train, data.unlabelled, truth,
                                     select(frame, budget, rank, seed=draw)[0]["path"].tolist(), root / rank / "data")
               for rank in RANKS}
    with ThreadPoolExecutor(jobs) as pool:
        retrained = dict(zip(RANKS, pool.map(lambda rank: finetune_lite(root / rank / "models", "lite0", 0,
                                                                          folders[rank], weights_dir), RANKS)))
    scores = {"before": accuracy(members[0], data.test)}
    scores.update({rank: accuracy(model_dir, data.test) for rank, model_dir in retrained.items()})
    return scores


def render(results: dict[int, dict[str, float]], budget: int, command: str, minutes: float) -> str:
    lines = ["## Which images to label next (`bench_active.py`)", "",
             "Fashion-MNIST, 30 labelled images per class, 3,000 unlabelled, 2,000 test images per draw; "
             "the committee "
             f"is the Lite trio at 96 px (4+4 epochs); each ranking adds {budget} labelled images, then Lite0 is "
             f"fine-tuned again (same plan, same validation share) and scored on the test images. `{command}`, "
             f"{minutes:.0f} min.", "",
             "| draw | Lite0 before | " + " | ".join(f"+{budget} by {rank}" for rank in RANKS)
             + " | disagreement - random |", "|---|" + "---:|" * (len(RANKS) + 2)]
    gains = []
    for draw, scores in results.items():
        gains.append(100 * (scores["disagreement"] - scores["random"]))
        lines.append(f"| {draw} | {scores['before']:.2%} | " + " | ".join(f"{scores[rank]:.2%}" for rank in RANKS)
                     + f" | {gains[-1]:+.2f} |")
    means = {key: np.mean([scores[key] for scores in results.values()]) for key in ("before", *RANKS)}
    lines.append("| mean | " + " | ".join(f"{means[key]:.2%}" for key in ("before", *RANKS))
                 + f" | **{np.mean(gains):+.2f}** (from {min(gains):+.2f} to {max(gains):+.2f}) |")
    return marked("bench_active", lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS)
    output_args(parser)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    results = {}
    for draw in args.draws:
        results[draw] = run_draw(draw, args.budget, args.jobs, args.weights_dir)
        step(f"draw {draw}: {results[draw]}")
    command = " ".join(["python benchmarks/bench_active.py", *(argv if argv is not None else sys.argv[1:])])
    text = render(results, args.budget, command, (time.perf_counter() - began) / 60)
    publish(text, args.out, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
