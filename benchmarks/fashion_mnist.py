"""Deterministic Fashion-MNIST slices as PNG class folders, for benchmarks on real data.

    python benchmarks/fashion_mnist.py [--train-per-class 100] [--test-per-class 200]
                                       [--unlabelled-per-class 0] [--draw 0] [--source DIR] [--out DIR]

Writes under --out (default benchmarks/data/fashion-mnist-<train>-<test>[-u<unlabelled>]/):
    train/<class>/<index>.png       N images per class from Fashion-MNIST's train split
    test/<class>/<index>.png        M images per class from its test split (disjoint by construction)
    unlabelled/img_NNNNN.png        K per class from the train split, disjoint from train/, shuffled
    unlabelled_labels.csv           path,label for the unlabelled images
A slice that is already complete is reused; the same arguments always give the same files.
The source is Debian's `dataset-fashion-mnist` (apt-get install dataset-fashion-mnist).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from common import DATA, ROOT

sys.path.insert(0, str(ROOT / "scripts"))  # the Debian reader and the class names scripts/make_sample_data.py uses
from make_sample_data import (
    CLASS_NAMES,
    DEBIAN_SOURCE,
    SampleDataError,
    read_split,
    write_numbered,
)

SEED = 2017  # as scripts/make_sample_data.py; the slices differ through their own generator streams
DONE = ".complete"  # written last: a folder without it was interrupted and is made again


@dataclass(frozen=True)
class Slice:
    root: Path
    train: Path  # labelled folder: quorum splits it 80/20 into train/val itself
    test: Path
    unlabelled: Path | None
    unlabelled_labels: Path | None


def default_out(train_per_class: int, test_per_class: int, unlabelled_per_class: int, draw: int = 0) -> Path:
    suffix = (f"-u{unlabelled_per_class}" if unlabelled_per_class else "") + (f"-draw{draw}" if draw else "")
    return DATA / f"fashion-mnist-{train_per_class}-{test_per_class}{suffix}"


def _pick(labels: np.ndarray, per_class: int, rng: np.random.Generator, exclude: set[int]) -> list[np.ndarray]:
    picked = []
    for c in range(len(CLASS_NAMES)):
        pool = np.array([i for i in np.flatnonzero(labels == c) if i not in exclude])
        picked.append(np.sort(rng.choice(pool, per_class, replace=False)))
    return picked


def _write_classes(folder: Path, images: np.ndarray, picked: list[np.ndarray]) -> None:
    for class_index, indices in enumerate(picked):
        target = folder / CLASS_NAMES[class_index]
        target.mkdir(parents=True)
        for index in indices:
            Image.fromarray(images[index], "L").save(target / f"{index:05d}.png")


def make_slice(train_per_class: int = 100, test_per_class: int = 200, unlabelled_per_class: int = 0,
               source: Path = DEBIAN_SOURCE, out: Path | None = None, draw: int = 0) -> Slice:
    """Write (or reuse) the slice and return where its parts are. Another `draw` picks other images
    (draw 0 is the slice every earlier run used)."""
    root = out or default_out(train_per_class, test_per_class, unlabelled_per_class, draw)
    has_unlabelled = unlabelled_per_class > 0
    result = Slice(root, root / "train", root / "test", root / "unlabelled" if has_unlabelled else None,
                   root / "unlabelled_labels.csv" if has_unlabelled else None)
    if (root / DONE).is_file():
        return result
    train_images, train_labels = read_split(source, "train")
    test_images, test_labels = read_split(source, "t10k")
    shutil.rmtree(root, ignore_errors=True)
    # One generator per slice, so asking for unlabelled images never changes train/ or test/.
    streams = [SEED] + ([draw] if draw else [])
    labelled = _pick(train_labels, train_per_class, np.random.default_rng([*streams, 10]), set())
    _write_classes(result.train, train_images, labelled)
    test = _pick(test_labels, test_per_class, np.random.default_rng([*streams, 11]), set())
    _write_classes(result.test, test_images, test)
    if has_unlabelled:
        rng = np.random.default_rng([*streams, 12])
        taken = set(np.concatenate(labelled).tolist())
        # Shuffled before numbering, so neither a name nor the order gives the class away.
        chosen = rng.permutation(np.concatenate(_pick(train_labels, unlabelled_per_class, rng, taken)))
        write_numbered(root, train_images, train_labels, chosen, digits=5)
    (root / DONE).write_text("ok\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--unlabelled-per-class", type=int, default=0)
    parser.add_argument("--source", type=Path, default=DEBIAN_SOURCE, help=f"default {DEBIAN_SOURCE}")
    parser.add_argument("--out", type=Path, help="default benchmarks/data/fashion-mnist-<train>-<test>[-u<K>][-drawN]")
    parser.add_argument("--draw", type=int, default=0, help="another N picks other images (0: the usual slice)")
    args = parser.parse_args(argv)
    try:
        made = make_slice(args.train_per_class, args.test_per_class, args.unlabelled_per_class, args.source, args.out,
                          args.draw)
    except SampleDataError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(f"{made.root}: train/ test/{' unlabelled/' if made.unlabelled else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
