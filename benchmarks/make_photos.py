"""Make the benchmark's photos from the sample images, deterministically.

    python benchmarks/make_photos.py [--images N] [--out benchmarks/data]

Each 28x28 grayscale Fashion-MNIST image becomes a 500x375 colour JPEG of a typical photo's size
and entropy: the garment upscaled and tinted on a textured, shaded background, with sensor noise.
A 28-pixel PNG decodes in microseconds and a photo does not; decoding is what the naive way
repeats once per member, so a benchmark on the small PNGs would flatter it.

Output (under --out), each set remade only when missing or made with other settings:
    photos-N/NNNN.jpg          the predict set: N renderings of the 400 sample images in turn
    photos-N.csv               path,label of each, for the accuracy and agreement figures
    labelled/train/<class>/    one other rendering of each labelled sample image (300)
    labelled/val/<class>/      one other rendering of each unlabelled sample image (100)
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from common import DATA, ROOT

SAMPLE = ROOT / "sample_data"
WIDTH, HEIGHT = 500, 375
SEED = 375
VERSION = 1  # bump when the rendering changes, so old sets are remade


def sample_images() -> list[tuple[Path, str, str]]:
    """(file, class, origin) for every sample image: the 300 labelled, then the 100 unlabelled."""
    items = [(path, path.parent.name, "train") for path in sorted((SAMPLE / "labelled").glob("*/*.png"))]
    with open(SAMPLE / "unlabelled_labels.csv", newline="") as file:
        items += [(SAMPLE / "unlabelled" / row["path"], row["label"], "val") for row in csv.DictReader(file)]
    return items


def render(path: Path, rng: np.random.Generator) -> Image.Image:
    """One photo: a textured background, the tinted garment at a random place and scale, noise."""
    gray = Image.open(path).convert("L")
    # 1. Background: a colour gradient, blotches and grain, like a table top or a wall.
    yy, xx = np.ogrid[0:HEIGHT, 0:WIDTH]
    a, b = rng.uniform(90, 220, 3).astype(np.float32), rng.uniform(60, 200, 3).astype(np.float32)
    t = ((xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) / (WIDTH + HEIGHT) + 0.5).astype(np.float32)
    blotches = Image.fromarray(rng.integers(0, 256, (12, 16), np.uint8)).resize((WIDTH, HEIGHT), Image.BICUBIC)
    photo = a + (b - a) * t[..., None]
    photo += (np.asarray(blotches, np.float32)[..., None] - 128) * np.float32(rng.uniform(0.1, 0.3))
    # 2. The garment, upscaled smoothly and tinted; its own intensity is the alpha, its detail the shading.
    side = int(rng.integers(230, 360))
    mask = np.asarray(gray.resize((side, side), Image.BICUBIC), np.float32)[..., None] / 255
    colour = rng.uniform(0.3, 1.0, 3).astype(np.float32) * 255 * (0.6 + 0.4 * mask)
    top, left = int(rng.integers(0, HEIGHT - side + 1)), int(rng.integers(0, WIDTH - side + 1))
    region = photo[top:top + side, left:left + side]
    alpha = np.minimum(mask * 1.6, 1)
    region *= 1 - alpha
    region += colour * alpha
    # 3. Sensor noise and a little blur, as a camera gives: most of a JPEG's bytes are this texture.
    photo += rng.standard_normal(photo.shape, np.float32) * 7
    pixels = np.clip(photo, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").filter(ImageFilter.GaussianBlur(0.6))


def _fresh(target: Path, settings: dict) -> bool:
    """True if `target` was made with `settings`; else clear it so it can be made again."""
    stamp = target.with_name(target.name + ".json")
    if stamp.is_file() and json.loads(stamp.read_text()) == settings:
        return True
    shutil.rmtree(target, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    return False


def _stamp(target: Path, settings: dict) -> None:
    target.with_name(target.name + ".json").write_text(json.dumps(settings))  # last: a half-made set is remade


def make_predict_set(n_images: int, out: Path = DATA) -> Path:
    """`n_images` unlabelled photos in `out/photos-<n>/` (kept if already made), labels beside them."""
    folder, settings = out / f"photos-{n_images}", {"images": n_images, "seed": SEED, "version": VERSION}
    if _fresh(folder, settings):
        return folder
    items = sample_images()
    folder.mkdir(parents=True)
    rows = [("path", "label")]
    for number in range(n_images):
        # The k-th photo of a sample image is another rendering: another place, tint and background.
        path, label, _ = items[number % len(items)]
        render(path, np.random.default_rng([SEED, 0, number])).save(folder / f"{number:04d}.jpg", quality=90)
        rows.append((f"{number:04d}.jpg", label))
    with open(out / f"photos-{n_images}.csv", "w", newline="") as file:
        csv.writer(file, lineterminator="\n").writerows(rows)
    _stamp(folder, settings)
    return folder


def make_labelled_set(out: Path = DATA) -> Path:
    """`out/labelled/{train,val}/<class>/`: the sample images' own split, as photos (kept if made)."""
    folder, settings = out / "labelled", {"seed": SEED, "version": VERSION}
    if _fresh(folder, settings):
        return folder
    for number, (path, label, origin) in enumerate(sample_images()):
        (folder / origin / label).mkdir(parents=True, exist_ok=True)
        render(path, np.random.default_rng([SEED, 1, number])).save(folder / origin / label / f"{path.stem}.jpg",
                                                                     quality=90)
    _stamp(folder, settings)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="photos in the predict set (default 1000)")
    parser.add_argument("--out", type=Path, default=DATA, help=f"output folder (default {DATA})")
    args = parser.parse_args(argv)
    print(make_predict_set(args.images, args.out))
    print(make_labelled_set(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
