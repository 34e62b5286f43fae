"""Which ranking is worth a fine-tune? A fast stand-in for bench_active.py (issue 21): a logistic-regression head on
frozen EfficientNet-Lite0 features instead of Lite0 fine-tuned again.

    python benchmarks/studies/active_proxy.py [--draws 0 1 2 3 4 5] [--randoms 6]

Per draw of bench_active.py (its committee's `unlabelled.csv` and split under benchmarks/data/active/, which
bench_active.py makes): the frozen features (96 px, as `review --rank diverse` and `check` use) of the split's
training share, the 3,000 unlabelled and the 2,000 test images; each ranking picks 100 rows with
`quorum.predict.ranking`, a simulated person labels them, and the head is trained on the training share plus
those, either alone ("plain", as bench_active.py) or with the committee's unanimous rows, not flagged, as
pseudo-labels (the picks left out of them: "loop", as bench_active.py --loop). Prints each ranking's test
accuracy less random's (the mean of `--randoms` seeded picks), per draw, with the mean and standard error.
Minutes, not hours: what it ranks was then checked with fine-tunes (RESULTS.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import normalize

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, where the shared modules are
from common import DATA  # noqa: E402
from fashion_mnist import default_out  # noqa: E402
from quorum.data.predictions_csv import flagged_unknown  # noqa: E402
from quorum.models.features import frozen_features  # noqa: E402
from quorum.predict.ranking import disagreement, doubt, rank, select  # noqa: E402
from quorum.predict.table import read_predictions  # noqa: E402


def draw_features(draw: int) -> dict:
    """Features and labels of a draw's training share, unlabelled and test images (cached beside its committee)."""
    root = DATA / "active" / f"draw{draw}"
    cache = root / "proxy-features.npz"
    if not cache.is_file():
        data = default_out(30, 200, 300, draw)
        split = pd.read_csv(root / "committee" / "split.csv", dtype=str, keep_default_na=False)
        train = split[split.subset == "train"]
        unlabelled = pd.read_csv(data / "unlabelled_labels.csv", dtype=str, keep_default_na=False)
        test = sorted(path.relative_to(data / "test").as_posix() for path in (data / "test").rglob("*.png"))
        np.savez(cache, train=frozen_features(data / "train", train.path.tolist(), 96, quiet=True),
                 train_labels=train.label.to_numpy(), unlabelled=frozen_features(
                     data / "unlabelled", unlabelled.path.tolist(), 96, quiet=True),
                 unlabelled_paths=unlabelled.path.to_numpy(), unlabelled_labels=unlabelled.label.to_numpy(),
                 test=frozen_features(data / "test", test, 96, quiet=True),
                 test_labels=np.array([path.split("/")[0] for path in test]))
    arrays = dict(np.load(cache, allow_pickle=True))
    for key in ("train", "unlabelled", "test"):
        arrays[key] = normalize(np.nan_to_num(arrays[key]))
    return arrays


def consensus_kl_alone(frame: pd.DataFrame, budget: int, seed: int) -> list[str]:
    """The earlier `disagreement`: consensus KL first, ties to the thinner margin."""
    rows, _ = rank(frame, "margin")
    return rows["path"].iloc[np.lexsort((-doubt(rows), -disagreement(rows)))[:budget]].tolist()


RANKINGS = {"disagreement": lambda frame, budget, seed: select(frame, budget, "disagreement")[0]["path"].tolist(),
            "margin": lambda frame, budget, seed: select(frame, budget, "margin")[0]["path"].tolist(),
            "consensus KL alone": consensus_kl_alone}


def test_accuracy(arrays: dict, frame: pd.DataFrame, picked: list[str], loop: bool) -> float:
    position = {path: i for i, path in enumerate(arrays["unlabelled_paths"])}
    chosen = [position[path] for path in picked]
    features = [arrays["train"], arrays["unlabelled"][chosen]]
    labels = [arrays["train_labels"], arrays["unlabelled_labels"][chosen]]
    if loop:
        agreed = frame[(frame["status"] == "ok") & ~flagged_unknown(frame) & (frame["agreement"] >= 1 - 1e-6)
                       & ~frame["path"].isin(set(picked))]
        features.append(arrays["unlabelled"][[position[path] for path in agreed["path"]]])
        labels.append(agreed["prediction"].to_numpy())
    head = LogisticRegression(max_iter=3000).fit(np.vstack(features), np.concatenate(labels))
    return float((head.predict(arrays["test"]) == arrays["test_labels"]).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--randoms", type=int, default=6, help="random picks per draw (their mean is the baseline)")
    parser.add_argument("--budget", type=int, default=100)
    args = parser.parse_args(argv)
    for loop in (False, True):
        gains = {}
        for draw in args.draws:
            arrays = draw_features(draw)
            frame = read_predictions(DATA / "active" / f"draw{draw}" / "unlabelled.csv")
            random = np.mean([test_accuracy(arrays, frame, select(frame, args.budget, "random", seed=seed)[0]
                                            ["path"].tolist(), loop) for seed in range(args.randoms)])
            gains[draw] = {name: 100 * (test_accuracy(arrays, frame, pick(frame, args.budget, draw), loop) - random)
                           for name, pick in RANKINGS.items()}
        table = pd.DataFrame(gains)
        table["mean"] = table.mean(axis=1)
        table["standard error"] = table[args.draws].std(axis=1) / np.sqrt(len(args.draws))
        print(f"\n{'loop (with pseudo-labels)' if loop else 'plain'}: points of test accuracy over random, per draw")
        print(table.round(2).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
