"""Write real image files for tests: ordinary ones, and every awkward kind quorum must cope with.

    from image_factory import write_good_images, write_awkward_images, UNREADABLE
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

AWKWARD_SIZE = (40, 30)  # (width, height) of every readable awkward image, before EXIF rotation

# Names in write_awkward_images() that load_rgb must refuse; every other name must load.
UNREADABLE = frozenset(
    {"empty", "truncated_jpeg", "truncated_png", "text_as_jpg", "decompression_bomb"}
)

BOMB_SIZE = (10_000, 10_000)  # 1e8 pixels: above Pillow's warning limit, below its hard error

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def write_good_images(
    folder: Path,
    n: int,
    size: tuple[int, int] = (40, 30),
    tint: tuple[int, int, int] | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write n distinct RGB images (even: PNG, odd: JPEG) and return their paths.

    `tint` makes every image a noisy variant of one colour, so that two folders written
    with different tints are two classes a tiny model can learn apart.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    paths = []
    for index in range(n):
        base = np.array(tint if tint is not None else rng.integers(0, 256, 3), dtype=np.float64)
        ramp = np.linspace(-40, 40, width)[None, :, None]  # a gradient, so no two rows are flat
        noise = rng.normal(0, 20, (height, width, 3))
        pixels = np.clip(base + ramp + noise, 0, 255).astype(np.uint8)
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        pixels[top : top + height // 3, left : left + width // 3] = 255 - base.astype(np.uint8)
        path = folder / f"good_{seed:02d}_{index:03d}.{'png' if index % 2 == 0 else 'jpg'}"
        Image.fromarray(pixels, "RGB").save(path)
        paths.append(path)
    return paths


def write_awkward_images(folder: Path) -> dict[str, Path]:
    """Write one file of each awkward kind into `folder`; return name -> path.

    Names in UNREADABLE are broken files; the rest are valid but unusual and load as
    AWKWARD_SIZE (the EXIF-rotated one as its transpose).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    writers = {
        "empty": ("empty.jpg", _write_empty),
        "truncated_jpeg": ("truncated.jpg", lambda p: _write_truncated(p, "JPEG")),
        "truncated_png": ("truncated.png", lambda p: _write_truncated(p, "PNG")),
        "text_as_jpg": ("notes.jpg", lambda p: p.write_text("these are notes, not pixels\n")),
        "decompression_bomb": ("bomb.png", _write_bomb_png),
        "cmyk_jpeg": ("cmyk.jpg", lambda p: Image.new("CMYK", AWKWARD_SIZE, (0, 255, 255, 0)).save(p)),
        "gray16_png": ("gray16.png", lambda p: _gray16_steps().save(p)),
        "gray16_tiff": ("gray16_big_endian.tif", _write_gray16_big_endian_tiff),
        "float_tiff": ("float.tiff", _write_float_tiff),
        "palette_transparent_png": ("palette_transparent.png", _write_palette_transparent),
        "rgba_png": ("rgba.png", _write_rgba),
        "la_png": ("gray_alpha.png", _write_gray_alpha),
        "one_bit_png": ("one_bit.png", lambda p: _left_right("1", 0, 1).save(p)),
        "exif_rotated_jpeg": ("exif_rotated.jpg", _write_exif_rotated),
        "animated_gif": ("animated.gif", _write_animated_gif),
        "multipage_tiff": ("multipage.tif", _write_multipage_tiff),
        "uppercase_png": ("UPPER.PNG", lambda p: Image.new("RGB", AWKWARD_SIZE, BLUE).save(p, "PNG")),
        "gray_bmp": ("gray.bmp", lambda p: _left_right("L", 50, 200).save(p)),
        "gray_webp": ("gray.webp", lambda p: _left_right("L", 50, 200).save(p, lossless=True)),
        # Formats Pillow reads under extensions a hand-written list forgets.
        "tga": ("targa.tga", lambda p: Image.new("RGB", AWKWARD_SIZE, RED).save(p, "TGA")),
        "ppm": ("netpbm.ppm", lambda p: Image.new("RGB", AWKWARD_SIZE, GREEN).save(p, "PPM")),
        "jfif": ("camera.jfif", lambda p: Image.new("RGB", AWKWARD_SIZE, BLUE).save(p, "JPEG")),
    }
    paths = {}
    for name, (file_name, write) in writers.items():
        paths[name] = folder / file_name
        write(paths[name])
    return paths


def _left_right(mode: str, left, right) -> Image.Image:
    """An AWKWARD_SIZE image whose left half is `left` and right half is `right`."""
    image = Image.new(mode, AWKWARD_SIZE, left)
    image.paste(right, (AWKWARD_SIZE[0] // 2, 0, *AWKWARD_SIZE))
    return image


def _write_empty(path: Path) -> None:
    path.write_bytes(b"")


def _write_truncated(path: Path, image_format: str) -> None:
    # Noise does not compress, so the cut lands in the middle of the pixel data.
    noise = np.random.default_rng(1).integers(0, 256, (*AWKWARD_SIZE[::-1], 3), dtype=np.uint8)
    Image.fromarray(noise, "RGB").save(path, image_format)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])


def _write_bomb_png(path: Path) -> None:
    """A valid 1-bit all-black PNG of BOMB_SIZE: ~12 MB of pixels compress to ~12 KB."""
    width, height = BOMB_SIZE

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    rows = (b"\x00" + bytes((width + 7) // 8)) * height  # filter byte + packed bits per row
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
    png += chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")
    path.write_bytes(png)


def _gray16_steps() -> Image.Image:
    """16-bit grayscale: columns 0-9 are 0, 10-19 are 32768, 20-39 are 65535."""
    row = np.repeat(np.array([0, 32768, 65535, 65535], dtype=np.uint16), AWKWARD_SIZE[0] // 4)
    return Image.fromarray(np.tile(row, (AWKWARD_SIZE[1], 1)))


def _write_gray16_big_endian_tiff(path: Path) -> None:
    values = np.asarray(_gray16_steps()).astype(">u2")
    Image.frombytes("I;16B", AWKWARD_SIZE, values.tobytes()).save(path)


def _write_float_tiff(path: Path) -> None:
    """32-bit float in the usual 0..1 range: columns of 0.0, 0.5 and 1.0."""
    row = np.repeat(np.array([0.0, 0.5, 1.0, 1.0], dtype=np.float32), AWKWARD_SIZE[0] // 4)
    Image.fromarray(np.tile(row, (AWKWARD_SIZE[1], 1)), "F").save(path)


def _write_palette_transparent(path: Path) -> None:
    """Palette image: left half index 0 (black, transparent), right half index 1 (red)."""
    image = _left_right("P", 0, 1)
    image.putpalette([0, 0, 0, *RED])
    image.save(path, transparency=0)


def _write_rgba(path: Path) -> None:
    """Left half fully transparent black, right half opaque blue."""
    _left_right("RGBA", (0, 0, 0, 0), (*BLUE, 255)).save(path)


def _write_gray_alpha(path: Path) -> None:
    """Left half fully transparent black, right half opaque mid-gray."""
    _left_right("LA", (0, 0), (128, 255)).save(path)


def _write_exif_rotated(path: Path) -> None:
    """Stored 40x30 with a red top-left quadrant; orientation 6 says 'turn 90 degrees clockwise'."""
    image = Image.new("RGB", AWKWARD_SIZE, WHITE)
    image.paste(RED, (0, 0, AWKWARD_SIZE[0] // 2, AWKWARD_SIZE[1] // 2))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    image.save(path, exif=exif, quality=95)


def _write_animated_gif(path: Path) -> None:
    """Frame 0 red, frame 1 blue."""
    first, second = Image.new("RGB", AWKWARD_SIZE, RED), Image.new("RGB", AWKWARD_SIZE, BLUE)
    first.save(path, save_all=True, append_images=[second], duration=100, loop=0)


def _write_multipage_tiff(path: Path) -> None:
    """Page 0 green at AWKWARD_SIZE, page 1 a blue square of another size."""
    first, second = Image.new("RGB", AWKWARD_SIZE, GREEN), Image.new("RGB", (20, 20), BLUE)
    first.save(path, save_all=True, append_images=[second])


# What write_not_images() leaves beside the images: none of it may get a row, all of it is counted.
NOT_IMAGES = {".txt": 2, ".json": 1, "hidden": 1}


def write_not_images(folder: Path, linked: Path) -> None:
    """Files that are not images (two .txt, one .json, one dot-file) and a symlink to the folder `linked`
    (inside `folder`, its images count twice; outside, it is never followed), plus a link back up that
    would loop forever if followed blindly."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("not pixels\n")
    (folder / "README").mkdir(exist_ok=True)
    (folder / "README" / "about.txt").write_text("also not pixels\n")
    (folder / "labels.json").write_text("{}\n")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "linked").symlink_to(Path(linked).resolve(), target_is_directory=True)
    (Path(linked) / "loop").symlink_to(Path(linked).resolve(), target_is_directory=True)


def write_corrupt_exif_jpeg(path: Path) -> Path:
    """A readable AWKWARD_SIZE JPEG rotated by EXIF orientation 6, whose EXIF also holds a tag
    that points past the end of the data: Pillow warns about it on every decode."""
    entries = struct.pack("<HHII", 0x0112, 3, 1, 6) + struct.pack("<HHII", 0x010F, 2, 1000, 5000)
    ifd = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 2) + entries + struct.pack("<I", 0)
    Image.new("RGB", AWKWARD_SIZE, RED).save(path, exif=b"Exif\x00\x00" + ifd)
    return Path(path)


COLOUR_CLASSES = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def write_labelled_folder(root: Path, per_class: int = 8, classes: int = 3) -> Path:
    """A labelled folder `root/<colour>/...` of small real images that a tiny model can learn."""
    for seed, (name, tint) in enumerate(list(COLOUR_CLASSES.items())[:classes]):
        write_good_images(Path(root) / name, per_class, tint=tint, seed=seed)
    return Path(root)
