"""Did keeping the last epoch cut bench_active's retrain noise? (issue 21, part 3a)

    python benchmarks/studies/active_noise.py [ROOT] [--draws 0 1 2 3 4 5]   (ROOT default: benchmarks/data/active)

Reads the test CSVs `bench_active.py --ranks disagreement margin --picks 3 --train-seeds 0 1` left under ROOT,
run once as it is (kept best: <pick>/models/) and once with `--keep-epoch last` (<pick>/models-last/): the same
picks, the same seeds, only the kept epoch differs. Prints per draw the mean absolute seed-0/seed-1 difference over
the 5 picks, the range of random's 3 picks (each the mean of its two seeds) and each ranking's gain over random,
then the gains' mean, sd and standard error over the draws. No model runs; a draw missing a CSV is left out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, where the shared modules are
from bench_active import accuracy, picks  # noqa: E402
from common import DATA, kept_epoch, table  # noqa: E402

PICKS = picks(["disagreement", "margin", "random"], 3)  # pick folder -> (ranking, seed offset)
KEEPS = {"best": "models", "last": "models-last"}
SEEDS = ("lite0", "lite0-seed1")


def draw_scores(root: Path, keep: str) -> dict | None:
    """{pick: [test accuracy with seed 0, with seed 1]} and "before", in points; None if a CSV is missing."""
    models = {pick: [root / pick / KEEPS[keep] / name for name in SEEDS] for pick in PICKS}
    models["before"] = [root / ("committee/lite0" if keep == "best" else "before/models-last/lite0")]
    tests = [model.parent / f"{model.name}-test.csv" for row in models.values() for model in row]
    if not all(test.is_file() for test in tests):
        return None
    return {pick: [100 * accuracy(model, Path()) for model in row]  # the CSVs are there: no test folder needed
            for pick, row in models.items()}


def kept_last(pick: Path, name: str) -> bool:
    """Whether the best-kept model of a pick and seed kept its last epoch (then both keeps kept the same one)."""
    model = pick / KEEPS["best"] / name
    return kept_epoch(json.loads((model / "model.json").read_text())) == len(pd.read_csv(model / "history.csv"))


def summary(draws: dict[int, dict]) -> dict:
    """Per draw: mean |seed 0 - seed 1| over the picks, random's picks' range, the gains over random, before."""
    out = {}
    for draw, scores in draws.items():
        picked = {pick: np.mean(scores[pick]) for pick in PICKS}
        random = [picked[pick] for pick, (rank, _) in PICKS.items() if rank == "random"]
        out[draw] = {"seed_gap": np.mean([abs(scores[pick][0] - scores[pick][1]) for pick in PICKS]),
                     "random_range": max(random) - min(random),
                     "disagreement": picked["disagreement"] - np.mean(random),
                     "margin": picked["margin"] - np.mean(random), "before": scores["before"][0]}
    return out


def spread(values: list[float]) -> str:
    sd = np.std(values, ddof=1) if len(values) > 1 else float("nan")
    return f"{np.mean(values):+.2f} (sd {sd:.2f}, se {sd / np.sqrt(len(values)):.2f}, n {len(values)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, nargs="?", default=DATA / "active")
    parser.add_argument("--draws", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    args = parser.parse_args(argv)
    read = {keep: {d: draw_scores(args.root / f"draw{d}", keep) for d in args.draws} for keep in KEEPS}
    draws = [d for d in args.draws if read["best"][d] and read["last"][d]]
    if not draws:
        print(f"no draw under {args.root} has both keeps' test CSVs")
        return 1
    best, last = (summary({d: read[keep][d] for d in draws}) for keep in KEEPS)
    keys = ["seed_gap", "random_range", "disagreement", "margin", "before"]
    rows = [[str(d), *(f"{best[d][k]:.2f} / {last[d][k]:.2f}" for k in keys)] for d in draws]
    rows.append(["mean", *(f"{np.mean([best[d][k] for d in draws]):.2f} / {np.mean([last[d][k] for d in draws]):.2f}"
                           for k in keys)])
    print("\n".join(table(["draw (best / last)", "mean abs seed 0 - seed 1", "random's 3 picks: range",
                           "disagreement - random", "margin - random", "Lite0 before"], rows)))
    for keep in KEEPS:
        gaps = [abs(read[keep][d][pick][0] - read[keep][d][pick][1]) for d in draws for pick in PICKS]
        print(f"kept {keep}, |seed 0 - seed 1| over {len(gaps)} picks: mean {np.mean(gaps):.2f}, median "
              f"{np.median(gaps):.2f}, largest {max(gaps):.2f}, "
              f"root mean square {np.sqrt(np.mean(np.square(gaps))):.2f}")
    pairs = [read[keep][d][pick] for d in draws for pick in PICKS for keep in KEEPS]
    paired = [last_ - best_ for best_, last_ in zip(pairs[::2], pairs[1::2]) for best_, last_ in zip(best_, last_)]
    print(f"per model, last - best (same images and seed): {spread(paired)}")
    same = [abs(last_ - best_) for d in draws for pick in PICKS for seed, best_, last_ in
            zip(SEEDS, read["best"][d][pick], read["last"][d][pick]) if kept_last(args.root / f"draw{d}" / pick, seed)]
    print(f"models whose best-kept run kept its last epoch too: {len(same)}, their test accuracies differ by at most "
          f"{max(same, default=0):.2f} points (0: the runs are the same but for the kept epoch)")
    for subset in dict.fromkeys((tuple(draws), tuple(d for d in draws if d <= 2))):
        for rank in ("disagreement", "margin"):
            print(f"{rank} - random, draws {subset}: best {spread([best[d][rank] for d in subset])}; "
                  f"last {spread([last[d][rank] for d in subset])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
