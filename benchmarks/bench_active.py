"""Which images to label next (issue 21, part a): which `review --budget --rank` picks images worth more than a
random pick of the same size?

    python benchmarks/bench_active.py [--draws 0 1 2] [--budget 100] [--ranks NAME ...] [--picks 3] [--train-seeds 0]
                                      [--jobs 2] [--keep-epoch best|last] [--out FILE] [--no-write]

Per draw of Fashion-MNIST (benchmarks/fashion_mnist.py: 30 labelled images per class, as sample_data has,
3,000 unlabelled, 2,000 test):
1. The committee: EfficientNet-Lite0/1/2 at 96 px, 4 frozen + 4 unfrozen epochs, offline ImageNet weights,
   each `quorum finetune` in its own process on one thread; then `quorum predict UNLABELLED --probs`.
2. Each ranking picks `--budget` rows from that CSV with the code `quorum review --budget` runs
   (`quorum.predict.ranking.select`; disagreement from its `consensus_kl` column; rows flagged unknown left
   out, random's included); a simulated person labels them from the data set's own labels. `--ranks oracle` adds a
   pick no ranking can make: rows the committee got wrong, at random (what correcting errors alone is worth).
3. Lite0 is fine-tuned again on the labelled training share plus those images (the validation share
   unchanged, given as DATA/train and DATA/val), and scored on the test images with `quorum predict`.
4. The rankings that draw (random; diverse's k-means start) pick `--picks` times per draw (seeds draw,
   draw+100, ...) and count with the mean of those picks: one random pick of 100 is a noisy baseline (its
   retrained model's accuracy varies by up to 2 points from pick to pick). With `--train-seeds 0 1`, each
   pick's Lite0 is fine-tuned once per seed and the pick counts with the mean: the same 100 images fine-tuned
   with another seed moved one model from 72.40% to 77.30%.
The figure: test accuracy per ranking, and each ranking's gain over random, per draw and on the mean.
The committee, its predictions and each ranking's retrained model are cached under benchmarks/data/active/
(shared by every ranking of a draw): a ranking whose code changed needs its folders deleted.
--keep-epoch last: only the retrained Lite0s change: they keep their final epoch (`quorum finetune --keep last`)
and go in <pick>/models-last/; the committee, its predictions and the picks are the best-kept run's. "Before" is
then a Lite0 keeping its last epoch on the committee's split (before/models-last/).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from common import DATA, WEIGHTS, accuracy, finetune_lite, marked, output_args, publish, quorum, share_folders, step
from fashion_mnist import make_slice
from quorum.predict.ranking import RANKINGS, select
from quorum.predict.review import image_features
from quorum.predict.table import read_predictions

RUNS = DATA / "active"
SEEDED = ("random", "diverse", "oracle")  # rankings whose seed changes their pick
# Not a ranking quorum has: `budget` of the rows the committee got wrong (by the data set's labels), drawn at random.
# What labelling errors alone is worth: the ceiling a ranking that reads only the CSV works under.
ORACLE = "oracle"


def with_new_labels(committee: Path, labelled: Path, unlabelled: Path, truth: dict[str, str], chosen: list[str],
                    out: Path) -> Path:
    """DATA/train (the split's training share plus the chosen images, with their true labels) and DATA/val."""
    if out.is_dir():
        return out
    split = pd.read_csv(committee / "split.csv", keep_default_na=False, dtype=str)
    kept = [(labelled / path, subset, label, Path(path).name) for path, label, subset in
            zip(split.path, split.label, split.subset)]
    new = [(unlabelled / path, "train", truth[path], f"new-{Path(path).name}") for path in chosen]
    return share_folders(kept + new, out)


def retrain(models: Path, data: Path, seed: int, weights_dir: Path, keep: str, pseudo: Path | None = None) -> Path:
    """Lite0 fine-tuned again on a pick's folder with one seed (seed 0: the name every earlier run used); with
    `pseudo`, the loop as quorum's README runs it: the committee's unanimous rows join as pseudo-labels (the
    picked images, now labelled, are left out of them by finetune)."""
    loop = ("--pseudo-labels", pseudo) if pseudo is not None else ()
    return finetune_lite(models, "lite0" + (f"-seed{seed}" if seed else ""), 0, data, weights_dir, "--seed", seed,
                         "--keep", keep, *loop)


def lite0_before(root: Path, data: Path, weights_dir: Path, keep: str) -> Path:
    """The Lite0 the picks are measured against: the committee's (kept best) or, keeping the last epoch, one
    fine-tuned on the committee's split (copied in: finetune reuses MODELS_DIR/split.csv) out of the committee's
    folder, so that predict over the committee never counts it."""
    if keep == "best":
        return root / "committee" / "lite0"
    models = root / "before" / "models-last"
    models.mkdir(parents=True, exist_ok=True)
    if not (models / "split.csv").is_file():
        shutil.copy(root / "committee" / "split.csv", models / "split.csv")
    return finetune_lite(models, "lite0", 0, data, weights_dir, "--keep", keep)


def choose(frame: pd.DataFrame, budget: int, rank: str, seed: int, features, truth: dict[str, str]) -> list[str]:
    """The paths a ranking picks, as `quorum review --budget` would (the oracle: wrong rows at random)."""
    if rank != ORACLE:
        return select(frame, budget, rank, seed=seed, features=features)[0]["path"].tolist()
    rows = select(frame, len(frame), "random", seed=seed)[0]  # readable, not flagged unknown, shuffled
    return rows[rows["prediction"] != rows["path"].map(truth)]["path"].head(budget).tolist()


def picks(ranks: list[str], count: int) -> dict[str, tuple[str, int]]:
    """Each pick's name (its folder) -> (ranking, seed offset): a seeded ranking `count` times, the others once."""
    columns = {rank: (rank, 0) for rank in ranks}
    columns.update({f"{rank}@{k}": (rank, 100 * k) for rank in ranks if rank in SEEDED for k in range(1, count)})
    return columns


def run_draw(draw: int, budget: int, columns: dict[str, tuple[str, int]], train_seeds: list[int], jobs: int,
             weights_dir: Path, keep: str = "best", loop: bool = False) -> dict[str, list[float]]:
    data = make_slice(30, 200, 300, draw=draw)
    committee = RUNS / f"draw{draw}" / "committee"
    root = RUNS / f"draw{draw}" / ("loop" if loop else "")  # the loop's picks apart: a ranking's code may differ
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(lambda n: finetune_lite(committee, f"lite{n}", n, data.train, weights_dir), range(3)))
    preds = committee.parent / "unlabelled.csv"
    if not preds.is_file():
        quorum("predict", str(data.unlabelled), "--out", str(preds), "--models-dir", str(committee), "--probs", "-q")
    frame = read_predictions(preds)
    features = partial(image_features, preds, data.unlabelled)  # as review computes them
    truth = dict(pd.read_csv(data.unlabelled_labels, keep_default_na=False, dtype=str).itertuples(index=False))
    chosen = {name: choose(frame, budget, rank, draw + offset, features, truth)
              for name, (rank, offset) in columns.items() if not (root / name / "data").is_dir()}
    folders = {name: with_new_labels(committee, data.train, data.unlabelled, truth, chosen.get(name, []),
                                     root / name / "data") for name in columns}
    models = "models" if keep == "best" else "models-last"  # both kept: the best-kept figures stay cached
    pseudo = preds if loop else None
    if loop:  # "before": the loop with no picks, the pseudo-labels alone
        folders["before"] = with_new_labels(committee, data.train, data.unlabelled, truth, [], root / "before" / "data")
    runs = [(name, seed) for name in [*columns, *(["before"] if loop else [])] for seed in train_seeds]
    with ThreadPoolExecutor(jobs) as pool:
        tested = dict(zip(runs, pool.map(lambda run: accuracy(retrain(root / run[0] / models, folders[run[0]],
                                                                      run[1], weights_dir, keep, pseudo), data.test),
                                         runs)))
    scores = {"before": [float(np.mean([tested["before", seed] for seed in train_seeds]))] if loop else
              [accuracy(lite0_before(RUNS / f"draw{draw}", data.train, weights_dir, keep), data.test)]}
    for name, (rank, _) in columns.items():  # a pick counts with the mean of its fine-tunes
        scores.setdefault(rank, []).append(float(np.mean([tested[name, seed] for seed in train_seeds])))
    return scores


def render(results: dict[int, dict[str, list[float]]], budget: int, ranks: list[str], count: int,
           train_seeds: list[int], command: str, minutes: float, keep: str = "best", loop: bool = False) -> str:
    """The table: each ranking's test accuracy (the mean of its picks where it has several) and its gain over
    random's mean, per draw and on the mean of the draws."""
    others = [rank for rank in ranks if rank != "random"]
    columns = ["before", *others, "random"]
    kept = ", Lite0 keeping its last epoch" if keep == "last" else ""
    title = f"## Which images to label next (`bench_active.py`){kept}{', the loop with pseudo-labels' if loop else ''}"
    pseudo = (" with the committee's unanimous rows not flagged unknown as pseudo-labels (`--pseudo-labels`: the "
              "picked images, now labelled, are left out of them; Lite0 before: the same with no picks)"
              if loop else "")
    lines = [title, "",
             "Fashion-MNIST, 30 labelled images per class, 3,000 unlabelled, 2,000 test images per draw; "
             "the committee "
             f"is the Lite trio at 96 px (4+4 epochs); each ranking adds {budget} labelled images, then Lite0 is "
             f"fine-tuned again (same plan, same validation share; kept: the {keep} epoch, the Lite0 before too)"
             f"{pseudo} and scored on the test images; "
             f"{' and '.join(rank for rank in ranks if rank in SEEDED)} pick {count} times per draw (the mean, the "
             f"picks in brackets); each pick fine-tuned with seed(s) {' and '.join(map(str, train_seeds))}, "
             f"the mean counted. `{command}`, {minutes:.0f} min.", "",
             "| draw | Lite0 before | " + " | ".join(f"+{budget} by {rank}" for rank in columns[1:])
             + " | " + " | ".join(f"{rank} - random" for rank in others) + " |",
             "|---|" + "---:|" * (len(columns) + len(others))]

    def cell(accuracies: list[float]) -> str:
        picked = f" ({' / '.join(f'{100 * a:.2f}' for a in accuracies)})" if len(accuracies) > 1 else ""
        return f"{np.mean(accuracies):.2%}{picked}"

    gains = {rank: [100 * (np.mean(scores[rank]) - np.mean(scores["random"])) for scores in results.values()]
             for rank in others}
    for i, (draw, scores) in enumerate(results.items()):
        lines.append(f"| {draw} | " + " | ".join(cell(scores[key]) for key in columns) + " | "
                     + " | ".join(f"{gains[rank][i]:+.2f}" for rank in others) + " |")
    means = {key: np.mean([np.mean(scores[key]) for scores in results.values()]) for key in columns}
    lines.append("| mean | " + " | ".join(f"{means[key]:.2%}" for key in columns) + " | "
                 + " | ".join(f"**{np.mean(gains[rank]):+.2f}** ({min(gains[rank]):+.2f} to {max(gains[rank]):+.2f})"
                              for rank in others) + " |")
    return marked("bench_active" + ("-last" if keep == "last" else "") + ("-loop" if loop else ""), lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--ranks", nargs="+", choices=[*RANKINGS, ORACLE], default=list(RANKINGS),
                        help="random is run whether listed or not; oracle: wrong rows at random (not a ranking)")
    parser.add_argument("--picks", type=int, default=3, help="picks per draw of a ranking that draws (random, diverse)")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[0],
                        help="fine-tune each pick once per seed; the pick counts with the mean")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--keep-epoch", choices=["best", "last"], default="best",
                        help="the epoch each retrained Lite0 keeps (quorum finetune --keep); last: in models-last/")
    parser.add_argument("--loop", action="store_true",
                        help="fine-tune again as the README's loop does: with --pseudo-labels of the committee's "
                             "predictions (picks under draw<N>/loop/)")
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS)
    output_args(parser)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    ranks = [rank for rank in [*RANKINGS, ORACLE] if rank in args.ranks or rank == "random"]  # random: the baseline
    results = {}
    for draw in args.draws:
        results[draw] = run_draw(draw, args.budget, picks(ranks, args.picks), args.train_seeds, args.jobs,
                                 args.weights_dir, args.keep_epoch, args.loop)
        step(f"draw {draw}: {results[draw]}")
    command = " ".join(["python benchmarks/bench_active.py", *(argv if argv is not None else sys.argv[1:])])
    minutes = (time.perf_counter() - began) / 60
    text = render(results, args.budget, ranks, args.picks, args.train_seeds, command, minutes, args.keep_epoch,
                  args.loop)
    publish(text, args.out, write=not args.no_write, after="bench_active")  # beside the earlier tables
    return 0


if __name__ == "__main__":
    sys.exit(main())
