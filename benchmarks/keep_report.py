"""Issue 19's question, paired: do members keeping their last epoch (`finetune --keep last`) make validation
honest, against the same members keeping their best one?

    python benchmarks/keep_report.py [--out FILE] [--no-write]

Reads what `bench_unknown.py --split-seed N [--keep-epoch last]` left for split seeds 0, 1 and 2:
benchmarks/data/unknown[-split<N>][-last]/ (measured.json, lite*/result.json). Both keeps train on the
same split, images and seeds, so their epochs are the same ones (checked here): only the kept one differs.
The section between the bench_unknown-keep markers of --out is replaced.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import DATA, kept_epoch, marked, output_args, publish

SEEDS, LITES = (0, 1, 2), (0, 1, 2)
PRODUCT = "quorum predict's score: kNN distance, members' mean"
BASELINE = "max probability (baseline)"


def runs(seed: int, keep: str) -> Path:
    name = "unknown" + (f"-split{seed}" if seed else "")
    return DATA / (name + ("-last" if keep == "last" else ""))


def read(seed: int, keep: str) -> tuple[dict, list[dict]]:
    """(bench_unknown's measured.json, each member's result.json) of one seed and keep."""
    folder = runs(seed, keep)
    return (json.loads((folder / "measured.json").read_text()),
            [json.loads((folder / f"lite{lite}" / "result.json").read_text()) for lite in LITES])


def member_rows(seed: int, best: tuple, last: tuple) -> list[str]:
    rows = []
    for m, lite in enumerate(LITES):
        b, la = best[1][m], last[1][m]
        if b["val_accuracy"] != la["val_accuracy"] or b["lr"] != la["lr"]:
            raise SystemExit(f"seed {seed} Lite{lite}: the two runs' epochs differ, so they are not paired")
        cb, cl = best[0]["calibration"][m], last[0]["calibration"][m]
        gap = [(c["val accuracy"] - c["test accuracy"]) * 100 for c in (cb, cl)]
        rows.append(f"| {seed} | Lite{lite} | {kept_epoch(b)} / {kept_epoch(la)} "
                    f"| {cb['val accuracy']:.1%} / {cl['val accuracy']:.1%} "
                    f"| {cb['test accuracy']:.1%} / {cl['test accuracy']:.1%} "
                    f"({(cl['test accuracy'] - cb['test accuracy']) * 100:+.1f}) "
                    f"| {gap[0]:+.1f} / {gap[1]:+.1f} | {cb['after']:.3f} / {cl['after']:.3f} |")
    return rows


def vote_row(seed: int, keep: str, measured: dict) -> str:
    p, vote = measured["product"], measured["calibration"][-1]  # the last row: predict's vote confidence
    detection = "; ".join(f"{source} {measured['detection'][PRODUCT][source]['auroc']:.3f} / "
                          f"{measured['detection'][PRODUCT][source]['fpr95']:.2f}"
                          for source in ("digits", "photos", "textures"))
    baseline = ", ".join(f"{measured['detection'][BASELINE][source]['auroc']:.3f}"
                         for source in ("digits", "photos", "textures"))
    return (f"| {seed} | {keep} | {vote['test accuracy']:.1%} | {vote['after']:.3f} "
            f"| {p['accuracy']:.1%} ({p['rows']}, {p['no-class']} of no class) "
            f"| {p['val accuracy']:.1%} ({p['val rows']}) "
            f"| {(p['accuracy'] - p['val accuracy']) * 100:+.1f} | {detection} | {baseline} |")


def render(command: str) -> str:
    both = {(seed, keep): read(seed, keep) for seed in SEEDS for keep in ("best", "last")}
    lines = ["## Keeping the last epoch instead of the best (`keep_report.py`, issue 19)", "",
             f"`{command}`, from bench_unknown.py's runs (see the sub-section below for the commands). Per member: "
             "best-kept / last-kept.", "",
             "| split seed | member | kept epoch | val accuracy | test accuracy (last - best, points) | val - test "
             "(points) | ECE after calibration (test) |", "|---|---|---|---|---|---|---|"]
    for seed in SEEDS:
        lines += member_rows(seed, both[(seed, "best")], both[(seed, "last")])
    lines += ["", "The vote as `quorum predict` writes it (confidence ECE on the 2,000 in-class test images), the "
              "unanimous rows its flag passes on the folder against its printed trust line, and its unknown score's "
              "AUROC / FPR at 95% kept per source (max probability's AUROC for comparison):", "",
              "| split seed | keep | vote test accuracy | vote ECE | unanimous, not flagged: right (rows) | trust line "
              "(val images) | folder - line (points) | unknown score AUROC / FPR | max probability AUROC |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += [vote_row(seed, keep, both[(seed, keep)][0]) for seed in SEEDS for keep in ("best", "last")]
    return marked("bench_unknown-keep", lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    output_args(parser)
    args = parser.parse_args()
    publish(render(" ".join(["python benchmarks/keep_report.py", *sys.argv[1:]])), args.out,
            write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
