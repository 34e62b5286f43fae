"""Which vote rule, with or without test-time augmentation? quorum's rules on real members and data.

    python benchmarks/bench_vote.py [--tta 2] [--jobs 2] [--evaluate-only] [--out FILE] [--no-write]

1. Data sets: bench_demo's draws 1-3 (30 Fashion-MNIST train images per class, as sample_data) and
   bench_recipe's slice (100 per class); each with a disjoint test set of 2,000 images (200 per class).
   quorum splits each train/ 80/20 once; the three members share that split.
2. Members: the Lite trio (EfficientNet-Lite0/1/2, ImageNet weights, 96 px, 4+4 epochs), each trained
   in its own process on one thread (common.train_in_process), at most --jobs at a time.
3. Each member predicts the val and test images as `quorum predict` does (pipeline.predict_arrays),
   once plain and once with --tta N views (timed: the cost of TTA). Each member's temperature is
   fitted on its val probabilities (quorum.calibration), as quorum calibrates members.
4. Rules (quorum.predict.vote): majority (ties to the best val member), soft, weighted with Caruana
   weights and with log-loss weights, both fitted on val. On test: accuracy, macro F1, ECE, the
   any-member-right ceiling; the best rule against majority by the exact McNemar test (binomial
   test on the images where exactly one of the two is right).
Trained runs and evaluations are kept under benchmarks/data/vote/ and reused; the section between the
bench_vote markers of --out is replaced.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from common import DATA, marked, output_args, publish, scores, train_in_process
from fashion_mnist import make_slice

RUNS = DATA / "vote"
TEST_PER_CLASS = 200  # 2,000 test images per data set
# (train images per class, draw): bench_demo's draws (sample-sized) and bench_recipe's slice (draw 0)
DATASETS = [(30, 1), (30, 2), (30, 3), (100, 0)]
FROZEN, UNFROZEN = 4, 4
LITES = (0, 1, 2)
RULES = {"majority": ("majority", None), "soft": ("soft", None), "weighted": ("weighted", "caruana"),
         "weighted (log-loss)": ("weighted", "log-loss")}


def prepare(train_per_class: int, draw: int) -> tuple[Path, Path]:
    """The slice and quorum's 80/20 split of its train/ (shared by the three members)."""
    from quorum.data.split import load_or_make_split

    root = make_slice(train_per_class, TEST_PER_CLASS, draw=draw).root
    runs = RUNS / root.name
    runs.mkdir(parents=True, exist_ok=True)
    load_or_make_split(root / "train", runs, val_fraction=0.2, seed=0)
    return root, runs


def train_member(root: Path, runs: Path, lite: int) -> dict:
    out = runs / f"lite{lite}"
    return train_in_process(["quorum", str(lite), str(FROZEN), str(UNFROZEN), str(out), "--data", str(root),
                             "--split", str(runs / "split.csv")], out, f"{root.name}/lite{lite}")


def member_outputs(root: Path, runs: Path, tta: int) -> dict:
    """Every member's probabilities on val and test, plain and with `tta` views (kept in outputs-ttaN.npz).
    Plain: what training stored (val_predictions.csv; recipe_runs' test_probs.npy, the eval pixels predict
    uses), raw. With TTA: `pipeline.predict_arrays`, as `quorum predict --tta` runs them (calibrated by the
    bundle's temperature, if it has one); the val images are also run plain there, to time the views."""
    saved = runs / f"outputs-tta{tta}.npz"
    if saved.is_file():
        return dict(np.load(saved))
    import torch

    from quorum.models.bundle import read_info, read_val_predictions
    from quorum.predict.members import load_members, member_engines
    from quorum.predict.pipeline import predict_arrays

    torch.set_num_threads(1)
    infos = [read_info(runs / f"lite{n}" / "models" / f"lite{n}") for n in LITES]
    classes = list(infos[0].classes)
    # Raw, as recipe_runs' test probabilities are: `evaluate` fits each member's temperature on them.
    stored = [read_val_predictions(info.path, info.classes) for info in infos]
    val_paths = stored[0][0]
    order = [[paths.index(path) for path in val_paths] for paths, _, _ in stored]
    test = sorted((root / "test").glob("*/*.png"))
    result = {"val_labels": stored[0][1], "val_tta1": np.stack([probs[o] for (_, _, probs), o in zip(stored, order)]),
              "test_labels": np.array([classes.index(p.parent.name) for p in test]),
              "test_tta1": np.stack([np.load(runs / f"lite{n}" / "test_probs.npy") for n in LITES])}
    assert (np.load(runs / "lite0" / "test_labels.npy") == result["test_labels"]).all()  # the same order
    # predict's default engine (ONNX Runtime where finetune wrote model.onnx), one thread per member
    members = load_members(infos, torch.device("cpu"), member_engines(infos, "auto", "cpu", quiet=True), threads=1)
    for name, paths in (("val", [root / "train" / p for p in val_paths]), ("test", test)):
        for views in ((1, tta) if name == "val" else (tta,)):
            began = time.perf_counter()
            outputs = predict_arrays(paths, members, 0, torch.device("cpu"), batch_size=32, workers=0, quiet=True,
                                     tta=views)
            result[f"{name}_seconds_tta{views}"] = np.array(time.perf_counter() - began)
            if views > 1:
                result[f"{name}_tta{views}"] = outputs.probs
    np.savez(saved, **result)
    return result


def evaluate(outputs: dict, tta: int) -> dict:
    """Members and rules on test, plain and with TTA; members calibrated on val first."""
    from quorum.calibration import (
        calibrate,
        expected_calibration_error,
        fit_temperature,
    )
    from quorum.predict.vote import default_tie_breaker, vote
    from quorum.predict.weights import METHODS

    y_val, y = outputs["val_labels"], outputs["test_labels"]
    scored = {}
    for views in (1, tta):
        val_raw, test_raw = outputs[f"val_tta{views}"], outputs[f"test_tta{views}"]
        temperatures = [fit_temperature(p, y_val) for p in val_raw]
        val = np.stack([calibrate(p, t) for p, t in zip(val_raw, temperatures)])
        test = np.stack([calibrate(p, t) for p, t in zip(test_raw, temperatures)])
        tie = default_tie_breaker([float((p.argmax(1) == y_val).mean()) for p in val])
        rows = {f"Lite{n}": (p.argmax(1), p) for n, p in zip(LITES, test)}
        weights = {}
        for label, (rule, method) in RULES.items():
            weights[label] = None if method is None else [float(w) for w in METHODS[method](val, y_val)]
            result = vote(test, tie, rule=rule, weights=weights[label])
            rows[label] = (result.label, result.combined)
        scored[views] = {
            "rows": {label: {**scores(pred, y), "ece": expected_calibration_error(p, y), "right": (pred == y).tolist()}
                     for label, (pred, p) in rows.items()},
            "ceiling": float((test.argmax(2) == y).any(axis=0).mean()), "weights": weights,
            "temperatures": temperatures, "seconds": float(outputs[f"val_seconds_tta{views}"]),
            "images": len(y), "val_images": len(y_val)}
    return scored


def mcnemar(right_a: list[bool], right_b: list[bool]) -> tuple[int, int, float]:
    """Images only a is right on, only b is right on, and the exact two-sided McNemar p (scipy's binomtest
    on the discordant pairs: statsmodels' mcnemar(exact=True) is the same test, and is not installed)."""
    from scipy.stats import binomtest

    a, b = np.asarray(right_a), np.asarray(right_b)
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return only_a, only_b, float(p)


def render(results: dict, tta: int, command: str) -> str:
    names = list(results)
    members, rules = [f"Lite{n}" for n in LITES], list(RULES)
    lines = ["## Vote rules and test-time augmentation (`bench_vote.py`)", "",
             f"`{command}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Data sets: "
             + ", ".join(f"{n} ({results[n][1]['images']:,} test, {results[n][1]['val_images']} val)" for n in names)
             + f". Members: EfficientNet-Lite0/1/2, ImageNet weights, 96 px, {FROZEN}+{UNFROZEN} epochs, each "
             f"calibrated (one temperature) on val. TTA: {tta} views (`quorum predict --tta {tta}`). "
             "Test accuracy; gain = the rule minus the best member on that data set, in points.", "",
             "| data set | TTA | " + " | ".join(members + rules) + " | ceiling |",
             "|---|---|" + "---|" * (len(members) + len(rules) + 1)]
    for views in (1, tta):
        for name in names:
            s = results[name][views]
            lines.append(f"| {name} | {views} | " + " | ".join(f"{s['rows'][r]['accuracy']:.1%}"
                                                               for r in members + rules)
                         + f" | {s['ceiling']:.1%} |")
        lines.append(f"| **mean** | {views} | " + " | ".join(f"{_mean(results, views, r):.1%}" for r in members + rules)
                     + f" | {np.mean([results[n][views]['ceiling'] for n in names]):.1%} |")
    lines += ["", ("Means over the data sets: accuracy gain over the best member and over majority (same TTA), "
                  "macro F1, ECE (15 bins)."), "",
              "| rule | TTA | accuracy | vs best member | vs majority | macro F1 | ECE |",
              "|---|---|---|---|---|---|---|"]
    for views in (1, tta):
        for rule in members + rules:
            gain = np.mean([results[n][views]["rows"][rule]["accuracy"] - _best_member(results[n][1]) for n in names])
            over = _mean(results, views, rule) - _mean(results, views, "majority")
            lines.append(f"| {rule} | {views} | {_mean(results, views, rule):.2%} | {gain * 100:+.2f} | "
                         + ("" if rule in members else f"{over * 100:+.2f}")
                         + f" | {_mean(results, views, rule, 'macro_f1'):.3f}"
                         f" | {_mean(results, views, rule, 'ece'):.3f} |")
    best_views, best_rule = max(((v, r) for v in (1, tta) for r in rules), key=lambda vr: _mean(results, *vr))
    lines += ["", (f"Best: {best_rule} at TTA {best_views}. Exact McNemar against majority without TTA (today's "
                  "default) and against majority at the same TTA: images only the best is right on / only majority "
                  "is."), "",
              "| data set | vs majority, TTA 1 | p | vs majority, same TTA | p |", "|---|---|---|---|---|"]
    for name in names + ["all pooled"]:
        cells = []
        for views in (1, best_views):
            if name == "all pooled":
                a, b = (np.concatenate([results[n][v]["rows"][r]["right"] for n in names]) for v, r in
                        ((best_views, best_rule), (views, "majority")))
            else:
                a = results[name][best_views]["rows"][best_rule]["right"]
                b = results[name][views]["rows"]["majority"]["right"]
            only_best, only_majority, p = mcnemar(a, b)
            cells += [f"{only_best} / {only_majority}", f"{p:.3g}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    seconds = {v: sum(results[n][v]["seconds"] for n in names) for v in (1, tta)}
    val_images = sum(results[n][1]["val_images"] for n in names)
    lines += ["", f"TTA cost: the trio (one thread, `predict_arrays` as predict runs it) took {seconds[1]:.0f} s for "
              f"the {val_images} val images plain and {seconds[tta]:.0f} s with {tta} views "
              f"({seconds[tta] / seconds[1]:.1f}x; one decode either way; a shared machine, so a ratio of one run). "
              "Weighted (Caruana) weights, Lite0/1/2, TTA 1: "
              + "; ".join(f"{n} " + "/".join(f"{w:.2f}" for w in results[n][1]["weights"]["weighted"]) for n in names)
              + ". Temperatures (TTA 1): "
              + "; ".join(f"{n} " + "/".join(f"{t:.2f}" for t in results[n][1]["temperatures"])
                                                        for n in names) + "."]
    return marked("bench_vote", lines)


def _mean(results: dict, views: int, rule: str, metric: str = "accuracy") -> float:
    return float(np.mean([results[n][views]["rows"][rule][metric] for n in results]))


def _best_member(scored: dict) -> float:
    return max(scored["rows"][f"Lite{n}"]["accuracy"] for n in LITES)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tta", type=int, default=2, help="views per image with TTA")
    parser.add_argument("--jobs", type=int, default=2, help="training runs at a time, one thread each")
    parser.add_argument("--evaluate-only", action="store_true", help="train nothing; evaluate the data sets whose "
                        "three members are trained")
    output_args(parser)
    args = parser.parse_args()
    prepared = [prepare(n, d) for n, d in DATASETS]
    if not args.evaluate_only:
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda job: train_member(*job), [(*p, lite) for p in prepared for lite in LITES]))
    results = {}
    for root, runs in prepared:
        if all((runs / f"lite{n}" / "result.json").is_file() for n in LITES):
            results[root.name] = evaluate(member_outputs(root, runs, args.tta), args.tta)
            print(f"evaluated {root.name}", file=sys.stderr, flush=True)
    if not results:
        print("no data set has its three members trained yet", file=sys.stderr)
        return 1
    section = render(results, args.tta, " ".join(["python benchmarks/bench_vote.py", *sys.argv[1:]]))
    publish(section, args.out, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
