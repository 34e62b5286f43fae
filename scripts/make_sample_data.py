"""Write quorum's small sample data set from Fashion-MNIST, deterministically.

    python scripts/make_sample_data.py [--source DIR] [--out DIR] [--overwrite]

Output (see sample_data/README.md):
    labelled/<class>/<train index>.png   30 train images per class
    unlabelled/img_NNNN.png              1,000 test images, 100 per class, shuffled
    unlabelled_labels.csv                path,label for the unlabelled images
"""

from __future__ import annotations

import argparse
import csv
import gzip
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

DEBIAN_SOURCE = Path("/usr/share/datasets/fashion-mnist")
# Label order is Fashion-MNIST's; "/" and spaces would make awkward folder names.
CLASS_NAMES = [
    "T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot",
]
LABELLED_PER_CLASS = 30
# Enough that one model or the vote being a point better shows: with 100 (10 per class, as before),
# each image was a point, and a 1-point gain of the vote was lost in the noise.
UNLABELLED_PER_CLASS = 100
SEED = 2017  # the year Fashion-MNIST was published; any fixed number would do
IDX_IMAGES, IDX_LABELS = 0x00000803, 0x00000801  # IDX magic: unsigned bytes, 3 or 1 dimensions


class SampleDataError(Exception):
    """Missing or unexpected source files, or an output that would be overwritten."""


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse a gzipped IDX file (big-endian header, then raw uint8 data)."""
    if not path.is_file():
        raise SampleDataError(
            f"{path} not found. Install it with `sudo apt-get install dataset-fashion-mnist` "
            "or point --source at a folder holding the four Fashion-MNIST .gz files."
        )
    data = gzip.decompress(path.read_bytes())
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise SampleDataError(f"{path} is not an IDX file of the expected kind (magic {found:#010x})")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_split(source: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(source / f"{split}-images-idx3-ubyte.gz", IDX_IMAGES)
    labels = read_idx(source / f"{split}-labels-idx1-ubyte.gz", IDX_LABELS)
    if len(images) != len(labels):
        raise SampleDataError(f"{split}: {len(images)} images but {len(labels)} labels")
    return images, labels


def pick_per_class(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> list[np.ndarray]:
    """For each class, `per_class` indices drawn without replacement, in ascending order."""
    return [np.sort(rng.choice(np.flatnonzero(labels == c), per_class, replace=False))
            for c in range(len(CLASS_NAMES))]


def write_labelled(out: Path, images: np.ndarray, labels: np.ndarray, rng) -> None:
    for class_index, indices in enumerate(pick_per_class(labels, LABELLED_PER_CLASS, rng)):
        folder = out / "labelled" / CLASS_NAMES[class_index]
        folder.mkdir(parents=True)
        for index in indices:
            Image.fromarray(images[index], "L").save(folder / f"{index:05d}.png")


def write_unlabelled(out: Path, images: np.ndarray, labels: np.ndarray, rng) -> None:
    # Shuffle before numbering, so neither a name nor the order gives the class away.
    chosen = rng.permutation(np.concatenate(pick_per_class(labels, UNLABELLED_PER_CLASS, rng)))
    write_numbered(out, images, labels, chosen)


def write_numbered(out: Path, images: np.ndarray, labels: np.ndarray, chosen, digits: int = 4) -> None:
    """out/unlabelled/img_NNNN.png in the order of `chosen`, and their labels in unlabelled_labels.csv."""
    folder = out / "unlabelled"
    folder.mkdir(parents=True)
    rows = []
    for number, index in enumerate(chosen):
        name = f"img_{number:0{digits}d}.png"
        Image.fromarray(images[index], "L").save(folder / name)
        rows.append((name, CLASS_NAMES[labels[index]]))
    with open(out / "unlabelled_labels.csv", "w", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(["path", "label"])
        writer.writerows(rows)


def make_sample_data(source: Path, out: Path, overwrite: bool = False) -> None:
    train = read_split(source, "train")  # read everything first: fail before touching out
    test = read_split(source, "t10k")
    generated = [out / "labelled", out / "unlabelled", out / "unlabelled_labels.csv"]
    existing = [p for p in generated if p.exists()]
    if existing and not overwrite:
        raise SampleDataError(f"{existing[0]} already exists; pass --overwrite to replace it")
    for path in existing:  # only what this script writes; out/README.md stays
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    # One generator per split, so changing one selection never shifts the other.
    write_labelled(out, *train, np.random.default_rng([SEED, 0]))
    write_unlabelled(out, *test, np.random.default_rng([SEED, 1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEBIAN_SOURCE,
                        help=f"folder with the Fashion-MNIST .gz files (default {DEBIAN_SOURCE})")
    parser.add_argument("--out", type=Path, default=Path("sample_data"),
                        help="output folder (default sample_data)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace labelled/, unlabelled/ and unlabelled_labels.csv in --out")
    args = parser.parse_args(argv)
    try:
        make_sample_data(args.source, args.out, args.overwrite)
    except SampleDataError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}/labelled, {args.out}/unlabelled and {args.out}/unlabelled_labels.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
