"""How much of what is planted in a labelled folder `quorum check` finds (issue 21, part b).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_loop.py [--draws 3] [--image-size 96] [--slice-draw 0]
                                                                 [--regained [--suggested]] [--out FILE] [--no-write]

For each draw, on a Fashion-MNIST slice (benchmarks/fashion_mnist.py, 100 train images per class; `--slice-draw N`
takes another slice's images: check's settings were chosen on slice draw 0, so 1, 2, ... hold them out):
1. Copy the slice's train/ to benchmarks/data/loop/slice<S>/draw<N>/check/data and flip 5% of the labels (move
   each file into another class's folder, chosen at random).
2. Plant 10 copies of other clean images into another class's folder (a conflict): 5 byte for
   byte, 5 near (re-encoded as JPEG at quality 90 and brightened by 4 grey levels).
3. Make the shared split as `quorum finetune` would (stratified 80/20, models/split.csv) and put each
   copy in the other share than its original (a leak).
4. Run `quorum check` (the library call) and score it against what was planted:
   - label: of the 50 flipped files, how many are in the first 100 label rows (2x as many), how many
     are flagged at all, the precision of the rows, and the share of clean images flagged;
   - conflict and leak: of the 10 planted pairs, how many are found; the share of rows that are planted.
With `--regained`, the accuracy regained by fixing what check lists: Lite0 at 96 px (4 frozen + 4 unfrozen
epochs, the last kept, offline weights) fine-tuned three times on the same split positions, scored on the slice's
2,000 test images: on the clean images (no flips, no copies), on the corrupted folder check saw, and on it fixed by
a simulated person who acts on every row check lists: a label row gets the image's true label back (a clean image
wrongly listed stays as it was: the person looks and sees it is right); of a conflict / leak / duplicate pair the
planted copy is deleted (a pair of two originals is left alone). `--suggested` adds a fourth: check's suggested
label taken for every label row without looking. The models are cached under the draw's folder: delete
benchmarks/data/loop/slice<S>/draw<N>/<way> to train one again (e.g. after check changed).
Prints Markdown tables and replaces their sections of RESULTS.md (slice draw 0's is the "Check" section; the
others go after it; `--no-write`: print only).
(Part a, active-learning rounds with retraining, is benchmarks/bench_active.py.)
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from common import DATA, WEIGHTS, accuracy, finetune_lite, marked, output_args, publish, share_folders, step
from fashion_mnist import make_slice
from quorum.data.split import make_split
from quorum.report.check import run_check

FLIP_SHARE = 0.05
PLANTED = 10
NOT_HELD_OUT = """\
- Not held out: the head's settings (unit-length features, C=0.05), cleanlab's `filter_by="both"`, the
  cut at a given-label probability of 0.1 and the near-copy levels were chosen on this same train slice
  (other flips of it), so these figures flatter `check` somewhat."""
HELD_OUT = """\
- Held out: check's settings were chosen on slice draw 0 (other flips of it); this slice was never used to choose
  them ({shared} of its 1,000 images are in slice draw 0 too: each slice picks 100 of each class's 6,000 at random)."""
CAVEATS = """\
- "Clean" images are the ones not flipped and not in a planted pair; Fashion-MNIST has some wrong or
  ambiguous labels of its own (Shirt against T-shirt_top), counted here as clean images flagged.
- The seconds are wall time on the shared 2-core machine under load (the load average above)."""
COUNTS = {"label: rows", "copies: rows not planted"}  # numbers; every other measure is a share


def corrupt(source: Path, work: Path, seed: int) -> dict:
    """DATA under work/data with flipped labels and planted copies, work/models/split.csv; what was planted
    (flipped: each flipped file's path -> its true label; pairs: (original, copy))."""
    rng = np.random.default_rng(seed)
    data, models = work / "data", work / "models"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(source, data)
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    paths = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))
    chosen = rng.permutation(len(paths))
    n_flip = round(FLIP_SHARE * len(paths))
    flipped, originals = {}, []
    for index in chosen[:n_flip]:
        label, name = paths[index].split("/")
        target = rng.choice([c for c in classes if c != label])
        (data / paths[index]).rename(data / target / name)
        flipped[f"{target}/{name}"] = label
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


def truth(planted: dict) -> dict[str, str]:
    """The true label of every file whose folder lies: the flipped ones and the planted copies (their original's)."""
    return {**planted["flipped"], **{copy: original.split("/")[0] for original, copy in planted["pairs"]}}


def person(findings: pd.DataFrame, planted: dict, look: bool = True) -> tuple[dict[str, str], set[str]]:
    """What a simulated person does with check's rows: the labels to change (path -> label) and the files to delete.
    Looking, a label row gets its true label (a right one stays); not looking, check's suggestion. Of a pair row
    (conflict, leak, duplicate) the planted copy goes; a pair of two originals stays."""
    labels, true = findings[findings.issue == "label"], truth(planted)
    if look:
        relabel = {path: true[path] for path in labels.path if path in true}
    else:
        relabel = dict(zip(labels.path, labels.suggested_label))
    copies = {copy for _, copy in planted["pairs"]}
    pairs = findings[findings.issue.isin(["conflict", "leak", "duplicate"])]
    return relabel, {path for pair in zip(pairs.path, pairs.other_path) for path in pair if path in copies}


def ways(findings: pd.DataFrame, planted: dict, suggested: bool) -> dict[str, list[tuple]]:
    """Each way's files (file, subset, label, name) for `share_folders`, all on the corrupted folder's split
    positions: clean (true labels, no copies), corrupted (what check saw), fixed (after the person)."""
    split = pd.read_csv(planted["models"] / "split.csv", keep_default_na=False, dtype=str)
    copies = {copy for _, copy in planted["pairs"]}

    def files(relabel: dict[str, str], deleted: set[str]) -> list[tuple]:
        return [(planted["data"] / path, subset, relabel.get(path, label), Path(path).name)
                for path, label, subset in zip(split.path, split.label, split.subset) if path not in deleted]

    result = {"clean": files(planted["flipped"], copies), "corrupted": files({}, set()),
              "fixed": files(*person(findings, planted))}
    if suggested:
        result["suggested"] = files(*person(findings, planted, look=False))
    return result


def regained(findings: pd.DataFrame, planted: dict, root: Path, test: Path, suggested: bool,
             weights_dir: Path) -> dict[str, float]:
    """Test accuracy of Lite0 fine-tuned on each way's folder, one fine-tune at a time (cached under root/WAY)."""
    scores = {}
    for way, files in ways(findings, planted, suggested).items():
        data = share_folders(files, root / way / "data")
        step(f"{root.name}: {way}")
        scores[way] = accuracy(finetune_lite(root / way / "models", "lite0", 0, data, weights_dir, "--keep", "last"),
                               test)
    return scores


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


def share_regained(clean: float, corrupted: float, fixed: float) -> str:
    """(fixed - corrupted) / (clean - corrupted), or a dash where corrupting cost under half a point: a share of
    so little is one fine-tune's noise over another's (slice draw 1's draw 1: 0.1 point cost, "-200%")."""
    return f"{(fixed - corrupted) / (clean - corrupted):.0%}" if clean - corrupted >= 0.005 else "-"


def regained_table(scores: list[dict[str, float]], fixes: list[tuple[int, int]]) -> str:
    """Test accuracy per way and draw, what the person fixed (flipped labels put right, planted copies deleted), the
    points fixing regained and its share of what corrupting cost."""
    names = list(scores[0])
    rows = [*scores, {name: float(np.mean([s[name] for s in scores])) for name in names}]
    fixed = [*(f"{right} / {deleted}" for right, deleted in fixes),
             " / ".join(f"{np.mean(column):.1f}" for column in zip(*fixes))]
    lines = ["| draw | " + " | ".join(names) + " | flips put right / copies deleted | corrupted - clean "
             "| fixed - corrupted | regained |", "| --- |" + " ---: |" * (len(names) + 4)]
    for label, row, fix in zip([*map(str, range(len(scores))), "mean"], rows, fixed):
        lines.append(f"| {label} | " + " | ".join(f"{row[name]:.2%}" for name in names) + f" | {fix}"
                     + f" | {100 * (row['corrupted'] - row['clean']):+.1f}"
                     + f" | {100 * (row['fixed'] - row['corrupted']):+.1f}"
                     + f" | {share_regained(row['clean'], row['corrupted'], row['fixed'])} |")
    return "\n".join(lines)


def slice_name(slice_draw: int) -> str:
    return "bench_loop" + (f"-slice{slice_draw}" if slice_draw else "")


def check_section(slice_draw: int, runs: list[dict], seconds: list[float], args, source: Path, footer: str) -> str:
    intro = (f"Fashion-MNIST slice draw {slice_draw}, 100 train images per class (1,000 + 10 planted copies), "
             f"features at {args.image_size} px; {args.draws} draws of 50 flipped labels (5%) and 10 planted copies "
             "(5 exact, 5 near: JPEG at quality 90, 4 grey levels brighter), each across classes and across the split.")
    if slice_draw:
        names = [{p.name for p in folder.rglob("*.png")} for folder in (source, make_slice(100, 200).train)]
        shared = len(names[0] & names[1])
        heading, held = f"### Held out: slice draw {slice_draw} (`bench_loop.py --slice-draw {slice_draw}`)", \
            HELD_OUT.format(shared=shared)
    else:
        heading, held = "## Check: planted label flips and copies (`bench_loop.py`)", NOT_HELD_OUT
    return marked(slice_name(slice_draw), [heading, "", intro, "", footer, "", findings_table(runs, seconds), "",
                                           held, CAVEATS])


def regained_section(slice_draw: int, scores: list[dict[str, float]], fixes: list[tuple[int, int]],
                     footer: str) -> str:
    lines = [f"### Accuracy regained by fixing what check lists, slice draw {slice_draw} (`bench_loop.py --regained`)",
             "", "Lite0 at 96 px, 4 frozen + 4 unfrozen epochs (the last kept), offline ImageNet weights, fine-tuned "
             "once per way on the same split positions (the corrupted folder's 80/20) and scored on the slice's 2,000 "
             "test images: clean (the slice's own labels, no copies), corrupted (the folder check saw), fixed (a "
             "simulated person gave every label row its true label, a right one staying, and deleted the planted copy "
             "of every conflict / leak / duplicate row)"
             + (", suggested (check's suggested label taken for every label row without looking, copies deleted "
                "as in fixed)" if "suggested" in scores[0] else "")
             + ". Regained: (fixed - corrupted) / (clean - corrupted).", "", footer, "",
             regained_table(scores, fixes), "",
             "- One fine-tune per way and draw: the same images fine-tuned with another seed can move a Lite0 by "
             "points (bench_active.py), as much as the 5% of flips costs here; read the mean, not a draw."]
    return marked(f"{slice_name(slice_draw)}-regained", lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--slice-draw", type=int, default=0, help="the Fashion-MNIST slice (0: the one check's "
                        "settings were chosen on; 1, 2, ...: held out)")
    parser.add_argument("--regained", action="store_true", help="fine-tune Lite0 on the clean, corrupted and fixed "
                        "folders and score each on the test images (three fine-tunes per draw, cached)")
    parser.add_argument("--suggested", action="store_true", help="with --regained, a fourth fine-tune per draw: "
                        "check's suggested labels taken without looking")
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS)
    output_args(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    began = time.perf_counter()
    data = make_slice(100, 200, draw=args.slice_draw)
    runs, seconds, scores, fixes = [], [], [], []
    for draw in range(args.draws):
        root = DATA / "loop" / f"slice{args.slice_draw}" / f"draw{draw}"
        planted = corrupt(data.train, root / "check", seed=draw)
        started = time.perf_counter()
        result = run_check(planted["data"], root / "check" / "out", models_dir=planted["models"],
                           image_size=args.image_size, seed=draw, quiet=True)
        seconds.append(time.perf_counter() - started)
        runs.append(score(result.findings, planted))
        print(f"draw {draw}: {runs[-1]}", flush=True)
        if args.regained:
            scores.append(regained(result.findings, planted, root, data.test, args.suggested, args.weights_dir))
            relabel, deleted = person(result.findings, planted)
            fixes.append((len(relabel.keys() & planted["flipped"].keys()), len(deleted)))
            print(f"draw {draw}: {scores[-1]}", flush=True)
    command = " ".join(["OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_loop.py",
                        *(argv if argv is not None else sys.argv[1:])])
    footer = (f"    {command}\n\n{(time.perf_counter() - began) / 60:.1f} min, load average "
              f"{os.getloadavg()[1]:.1f} (over the last 5 min at the end).")
    publish(check_section(args.slice_draw, runs, seconds, args, data.train, footer), args.out,
            write=not args.no_write, after="bench_loop")
    if args.regained:
        publish(regained_section(args.slice_draw, scores, fixes, footer), args.out, write=not args.no_write,
                after="bench_loop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
