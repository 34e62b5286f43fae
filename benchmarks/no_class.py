"""Images of no Fashion-MNIST class, made the same way every time, for bench_unknown.py.

    python benchmarks/no_class.py [--digits 250] [--photos 250] [--textures 150] [--out DIR]

Three sources, each written as Fashion-MNIST's own format (28x28 grayscale PNG, light object on a dark
background where there is one), so that only the content tells them apart and no score can win on
size, colour or file format (item 3's folder comparison is for those):
    digits/    scikit-learn's bundled handwritten digits (load_digits: 1,797 real 8x8 scans), upscaled
    photos/    crops of scikit-learn's two bundled photos (china.jpg, flower.jpg: 427x640 colour),
               10-60% of the short side at random places, in grayscale
    textures/  synthetic: sine gratings, checkerboards and smoothed noise at random scales and angles
A folder that is complete (`.complete`) is reused.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

SIZE = 28  # Fashion-MNIST's
SEED = 19  # issue 19
DONE = ".complete"
SOURCES = ("digits", "photos", "textures")


def digits(count: int, rng: np.random.Generator) -> list[Image.Image]:
    from sklearn.datasets import load_digits

    images = load_digits().images  # 0..16, ink high: already light on dark, as Fashion-MNIST
    picked = rng.choice(len(images), count, replace=False)
    # 8 px drawn into the middle 20 px of 28, as MNIST centres its digits in a 20 px box
    return [_pad(Image.fromarray((images[i] * 255 / 16).astype(np.uint8), "L").resize((20, 20), Image.BILINEAR))
            for i in picked]


def photos(count: int, rng: np.random.Generator) -> list[Image.Image]:
    from sklearn.datasets import load_sample_images

    sources = [Image.fromarray(image).convert("L") for image in load_sample_images().images]
    crops = []
    for k in range(count):
        photo = sources[k % len(sources)]
        side = int(rng.uniform(0.1, 0.6) * min(photo.size))
        left, top = int(rng.integers(0, photo.width - side)), int(rng.integers(0, photo.height - side))
        crops.append(photo.crop((left, top, left + side, top + side)).resize((SIZE, SIZE), Image.LANCZOS))
    return crops


def textures(count: int, rng: np.random.Generator) -> list[Image.Image]:
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    made = []
    for k in range(count):
        angle, period = rng.uniform(0, np.pi), rng.uniform(3, 14)
        u = x * np.cos(angle) + y * np.sin(angle)
        v = -x * np.sin(angle) + y * np.cos(angle)
        kind = k % 3
        if kind == 0:  # sine grating
            pixels = 0.5 + 0.5 * np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi))
        elif kind == 1:  # checkerboard
            pixels = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(float)
        else:  # smoothed noise
            noise = Image.fromarray((rng.random((SIZE, SIZE)) * 255).astype(np.uint8), "L")
            pixels = np.asarray(noise.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 3))), float) / 255
            pixels = (pixels - pixels.min()) / max(np.ptp(pixels), 1e-6)
        contrast = rng.uniform(0.4, 1.0)
        made.append(Image.fromarray((255 * contrast * pixels).astype(np.uint8), "L"))
    return made


def _pad(image: Image.Image) -> Image.Image:
    canvas = Image.new("L", (SIZE, SIZE), 0)
    canvas.paste(image, ((SIZE - image.width) // 2, (SIZE - image.height) // 2))
    return canvas


MAKERS = {"digits": digits, "photos": photos, "textures": textures}


def make_no_class(out: Path, counts: dict[str, int]) -> dict[str, list[Path]]:
    """Write (or reuse) out/<source>/<n>.png for each source; the paths per source."""
    if not (out / DONE).is_file():
        shutil.rmtree(out, ignore_errors=True)
        for index, source in enumerate(SOURCES):
            if not counts.get(source):
                continue
            (out / source).mkdir(parents=True)
            for n, image in enumerate(MAKERS[source](counts[source], np.random.default_rng([SEED, index]))):
                image.save(out / source / f"{n:04d}.png")
        (out / DONE).write_text(",".join(f"{s}={counts.get(s, 0)}" for s in SOURCES) + "\n")
    return {source: sorted((out / source).glob("*.png")) for source in SOURCES if (out / source).is_dir()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for source, default in zip(SOURCES, (250, 250, 150)):
        parser.add_argument(f"--{source}", type=int, default=default)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data" / "no-class")
    args = parser.parse_args()
    made = make_no_class(args.out, {source: getattr(args, source) for source in SOURCES})
    print(", ".join(f"{source} {len(paths)}" for source, paths in made.items()), "in", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
