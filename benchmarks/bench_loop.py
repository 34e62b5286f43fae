"""How much of what is planted in a labelled folder `quorum check` finds (issue 21, part b).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_loop.py [--draws 3] [--image-size 96]

For each draw, on a Fashion-MNIST slice (benchmarks/fashion_mnist.py, 100 train images per class):
1. Copy the slice's train/ to benchmarks/data/loop/draw<N>/data and flip 5% of the labels (move each
   file into another class's folder, chosen at random).
2. Plant 10 copies of other clean images into another class's folder (a conflict): 5 byte for
   byte, 5 near (re-encoded as JPEG at quality 90 and brightened by 4 grey levels).
3. Make the shared split as `quorum finetune` would (stratified 80/20, models/split.csv) and put each
   copy in the other share than its original (a leak).
4. Run `quorum check` (the library call) and score it against what was planted:
   - label: of the 50 flipped files, how many are in the first 100 label rows (2x as many), how many
     are flagged at all, the precision of the rows, and the share of clean images flagged;
   - conflict and leak: of the 10 planted pairs, how many are found; the share of rows that are planted.
Prints a Markdown table and replaces the "Check" section of RESULTS.md (`--no-write`: print only).
(Part a, active-learning rounds with retraining, is benchmarks/bench_active.py.)
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from common import DATA, marked, output_args, publish
from fashion_mnist import make_slice
from quorum.data.split import make_split
from quorum.report.check import run_check

FLIP_SHARE = 0.05
PLANTED = 10
CAVEATS = """\
- Not held out: the head's settings (unit-length features, C=0.05), cleanlab's `filter_by="both"`, the
  cut at a given-label probability of 0.1 and the near-copy levels were chosen on this same train slice
  (other flips of it), so these figures flatter `check` somewhat.
- "Clean" images are the ones not flipped and not in a planted pair; Fashion-MNIST has some wrong or
  ambiguous labels of its own (Shirt against T-shirt_top), counted here as clean images flagged.
- The seconds are wall time on the shared 2-core machine under load (load average about 20)."""
COUNTS = {"label: rows", "copies: rows not planted"}  # numbers; every other measure is a share


def corrupt(source: Path, work: Path, seed: int) -> dict:
    """DATA under work/data with flipped labels and planted copies, work/models/split.csv; what was planted."""
    rng = np.random.default_rng(seed)
    data, models = work / "data", work / "models"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(source, data)
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    paths = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))
    chosen = rng.permutation(len(paths))
    n_flip = round(FLIP_SHARE * len(paths))
    flipped, originals = [], []
    for index in chosen[:n_flip]:
        label, name = paths[index].split("/")
        target = rng.choice([c for c in classes if c != label])
        (data / paths[index]).rename(data / target / name)
        flipped.append(f"{target}/{name}")
    copies = []
    for k, index in enumerate(chosen[n_flip:n_flip + PLANTED]):
        label, name = paths[index].split("/")
        target = rng.choice([c for c in classes if c != label])
        if k % 2 == 0:
            copy = f"{target}/copy_{name}"
            shutil.copy(data / paths[index], data / copy)
        else:
            copy = f"{target}/copy_{Path(name).stem}.jpg"
            pixels = np.asarray(Image.open(data / paths[index]).convert("L"), dtype=np.int16)
            buffer = io.BytesIO()
            Image.fromarray(np.clip(pixels + 4, 0, 255).astype(np.uint8), "L").save(buffer, "JPEG", quality=90)
            (data / copy).write_bytes(buffer.getvalue())
        originals.append(paths[index])
        copies.append(copy)
    split = make_split(data, val_fraction=0.2, seed=0)
    share = dict(zip(split.path, split.subset))
    for original, copy in zip(originals, copies):  # the copy in the other share than its original
        split.loc[split.path == copy, "subset"] = "val" if share[original] == "train" else "train"
    models.mkdir()
    split.to_csv(models / "split.csv", index=False)
    return {"data": data, "models": models, "flipped": flipped, "pairs": list(zip(originals, copies)),
            "images": len(paths) + PLANTED}


def score(findings: pd.DataFrame, planted: dict) -> dict:
    flipped = set(planted["flipped"])
    pairs = {frozenset(pair) for pair in planted["pairs"]}
    in_pairs = set().union(*pairs)
    labels = findings[findings.issue == "label"]
    flagged = set(labels.path)
    top = set(labels.path.head(2 * len(flipped)))
    clean = planted["images"] - len(flipped) - len(in_pairs)
    result = {"label: flipped in the first 2x rows": len(flipped & top) / len(flipped),
              "label: flipped flagged (recall)": len(flipped & flagged) / len(flipped),
              "label: rows flipped or planted (precision)": len(flagged & (flipped | in_pairs)) / max(len(flagged), 1),
              "label: clean images flagged": len(flagged - flipped - in_pairs) / clean,
              "label: rows": len(labels)}
    for issue in ("conflict", "leak"):
        rows = findings[findings.issue == issue]
        found = {frozenset(pair) for pair in zip(rows.path, rows.other_path)}
        result[f"{issue}: planted found (recall)"] = len(found & pairs) / len(pairs)
        result[f"{issue}: rows planted (precision)"] = len(found & pairs) / max(len(found), 1)
    others = findings[findings.issue.isin(["duplicate", "conflict", "leak"])]
    result["copies: rows not planted"] = sum(frozenset(pair) not in pairs
                                             for pair in zip(others.path, others.other_path))
    return result


def findings_table(runs: list[dict], seconds: list[float]) -> str:
    names = list(runs[0])
    lines = ["| measure | " + " | ".join(f"draw {i}" for i in range(len(runs))) + " | mean |",
             "| --- |" + " ---: |" * (len(runs) + 1)]
    for name in names:
        values = [run[name] for run in runs]
        as_text = (lambda v: f"{v:.0f}") if name in COUNTS else (lambda v: f"{v:.0%}")
        lines.append(f"| {name} | " + " | ".join(map(as_text, values)) + f" | {as_text(np.mean(values))} |")
    lines.append("| seconds for `check` | " + " | ".join(f"{s:.0f}" for s in seconds) + f" | {np.mean(seconds):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=96)
    output_args(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    source = make_slice(100, 200).train
    runs, seconds = [], []
    for draw in range(args.draws):
        work = DATA / "loop" / f"draw{draw}"
        planted = corrupt(source, work, seed=draw)
        began = time.perf_counter()
        result = run_check(planted["data"], work / "check", models_dir=planted["models"], image_size=args.image_size,
                           seed=draw, quiet=True)
        seconds.append(time.perf_counter() - began)
        runs.append(score(result.findings, planted))
        print(f"draw {draw}: {runs[-1]}", flush=True)
    intro = ("Fashion-MNIST, 100 train images per class (1,000 + 10 planted copies), "
             f"features at {args.image_size} px; "
             f"{args.draws} draws of 50 flipped labels (5%) and 10 planted copies (5 exact, 5 near: JPEG at quality "
             "90, 4 grey levels brighter), each across classes and across the split.")
    text = marked("bench_loop", ["## Check: planted label flips and copies (`bench_loop.py`)", "", intro, "",
                                 "    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_loop.py", "",
                                 findings_table(runs, seconds), "", CAVEATS])
    publish(text, args.out, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
