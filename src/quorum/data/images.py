"""Find image files in a folder and decode them to 8-bit RGB, or say plainly why not."""

from __future__ import annotations

import functools
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from quorum.errors import QuorumError

_TIFF_BITS_PER_SAMPLE = 258
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


class UnreadableImage(QuorumError):
    """An image file that cannot be decoded; `reason` is short enough for a CSV column."""

    def __init__(self, reason: str, path: Path | None = None):
        super().__init__(reason)
        self.reason = reason
        self.path = path


@functools.cache
def image_extensions() -> frozenset[str]:
    """Every extension Pillow can open (lower case, with the dot): .tga, .ppm, .jfif as well as .jpg.

    Formats Pillow only writes (.pdf) are not images to us; formats it opens but cannot decode
    here (.eps without Ghostscript) still get a row, with the reason they failed."""
    Image.init()  # load every plugin, not only the common ones
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


# Kinds of skipped folders and links, in the order the summary names them.
HIDDEN_FOLDER, LINK_LOOP, LINK_OUTSIDE = "hidden folder", "folder link loop", "link out of the folder"
_FOLDER_KINDS = {HIDDEN_FOLDER: "hidden folders", LINK_LOOP: "folder link loops",  # kind: its plural
                 LINK_OUTSIDE: "links out of the folder"}


@dataclass(frozen=True)
class Scan:
    """The image files under a folder, and a count of everything else that was passed over."""

    images: list[Path]
    skipped: Counter = field(default_factory=Counter)  # '.txt', 'no extension', 'hidden', 'hidden folder', ...

    def summary(self) -> str:
        """E.g. 'skipped 3 files (1 .json, 2 .txt)'; '' when nothing was skipped."""
        def count(kind: str, n: int) -> str:
            return f"{n} with no extension" if kind == "no extension" else f"{n} {kind}"
        kinds = sorted(k for k in self.skipped if k.startswith("."))
        kinds += [k for k in ("no extension", "hidden") if k in self.skipped]
        parts = []
        if kinds:
            n = sum(self.skipped[k] for k in kinds)
            parts.append(f"{n} file{'s' * (n != 1)} ({', '.join(count(k, self.skipped[k]) for k in kinds)})")
        for kind, plural in _FOLDER_KINDS.items():
            if self.skipped[kind]:
                parts.append(f"{self.skipped[kind]} {kind if self.skipped[kind] == 1 else plural}")
        return "skipped " + " and ".join(parts) if parts else ""


def check_folder(folder: Path) -> Path:
    """`folder` as a Path, or the error a missing one gets (cheap: the CLI calls it before torch loads)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise QuorumError(f"image folder not found: {folder}")
    return folder


def scan_images(folder: Path) -> Scan:
    """Every image under `folder`, recursively, and a count of the files that are not.

    Hidden files and folders (`.DS_Store`, `.git/`) are skipped and counted. Links to folders
    are followed, as if the folder were there, once each: a link back up is a counted loop. A link
    that leads outside `folder` (to its parent, elsewhere) is skipped and counted: a scan never
    reads outside its folder, so no row of predict's CSV can name a file there.
    Sorted by relative POSIX path so the order is the same on every OS and every run.
    """
    folder = check_folder(folder)
    root = folder.resolve()
    extensions, found, skipped = image_extensions(), [], Counter()
    on_path: list[tuple[int, int]] = []  # (device, inode) of the folders from `folder` down to here

    def walk(directory: Path) -> None:
        stat = directory.stat()
        if (stat.st_dev, stat.st_ino) in on_path:
            skipped[LINK_LOOP] += 1
            return
        on_path.append((stat.st_dev, stat.st_ino))
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    skipped[HIDDEN_FOLDER if _is_folder(entry) else "hidden"] += 1
                elif entry.is_symlink() and _leads_outside(entry, root):
                    skipped[LINK_OUTSIDE] += 1
                elif _is_folder(entry):  # follows links
                    walk(Path(entry.path))
                elif (suffix := Path(entry.name).suffix.lower()) in extensions:
                    found.append(Path(entry.path))
                else:
                    skipped[suffix or "no extension"] += 1
        on_path.pop()

    walk(folder)
    check_utf8_names(folder, found)
    return Scan(sorted(found, key=lambda p: p.relative_to(folder).as_posix()), skipped)


def _leads_outside(link: os.DirEntry, root: Path) -> bool:
    try:
        return not Path(link.path).resolve().is_relative_to(root)
    except RuntimeError:  # a link loop (Python 3.11 says so this way) leads nowhere: a broken link
        return False


def _is_folder(entry: os.DirEntry) -> bool:
    """A link in a loop (ELOOP) is a broken link, as a dangling one is: not a folder. If it is named
    like an image it gets a row that says why it cannot be read, as a dangling link does."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def check_utf8_names(folder: Path, paths: list[Path]) -> None:
    """quorum's CSVs and JSON are UTF-8: a name that is not (bytes from another system's encoding)
    could not be written there, nor matched again, so it is refused by name before any work."""
    wrong = []
    for path in paths:
        try:
            path.relative_to(folder).as_posix().encode("utf-8")
        except UnicodeEncodeError:
            wrong.append(os.fsencode(path.relative_to(folder)).decode("utf-8", "backslashreplace"))
    if wrong:
        listed = ", ".join(wrong[:3]) + (f" and {len(wrong) - 3} more" if len(wrong) > 3 else "")
        raise QuorumError(f"{len(wrong)} file name(s) in {folder} are not UTF-8 ({listed}): rename them, "
                          f"e.g. convmv -f latin1 -t utf-8 -r --notest {folder}")


def load_rgb(path: Path) -> Image.Image:
    """Decode `path` fully into an upright 8-bit RGB image, or raise UnreadableImage."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise UnreadableImage("empty file", path)
        # A bomb only warns below 2x MAX_IMAGE_PIXELS; we want it to fail here, not to
        # eat memory later. Scoped to this call: the global filter is the caller's.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Pillow warns about broken metadata (EXIF tags past the end, ...) and decodes anyway:
            # the pixels are fine, and the warning would land mid-progress-bar, once per worker.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
            with Image.open(path) as image:  # opens on frame/page 0
                image.load()  # decode everything now, so truncation surfaces here
                # Read the bit depth off the file: the rotated copy no longer has its tags.
                return _to_rgb(ImageOps.exif_transpose(image), _bit_depth(image))
    except UnreadableImage:
        raise
    except Exception as exc:  # Pillow's plugins raise many types on corrupt data
        raise UnreadableImage(_reason(exc), path) from exc


def _to_rgb(image: Image.Image, bit_depth: int) -> Image.Image:
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return Image.fromarray(_high_depth_to_uint8(image, bit_depth), "L").convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:  # incl. palette/tRNS
        # Drop transparency onto WHITE: transparent product shots and drawings are made
        # to be seen on a white page, and Pillow's plain RGB conversion would show
        # whatever colour hides under alpha=0 (usually black), inventing dark shapes.
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")  # L, P, 1, CMYK, YCbCr, RGB (a copy, detached from the file)


def _high_depth_to_uint8(image: Image.Image, bit_depth: int) -> np.ndarray:
    """Scale 16/32-bit integer or float grayscale to 0..255 instead of clipping it."""
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        values = np.nan_to_num(values)
        low, high = values.min(), values.max()
        if low < 0 or high > 1:  # not the usual 0..1 float range: stretch what is there
            values = (values - low) / (high - low) if high > low else np.zeros_like(values)
        full_scale = 1.0
    else:
        full_scale = 2.0**bit_depth - 1
    return np.clip(np.rint(values * (255.0 / full_scale)), 0, 255).astype(np.uint8)


def _bit_depth(image: Image.Image) -> int:
    """Bits per sample as the file declares them; 'I' is only the 32-bit container."""
    declared = getattr(image, "tag_v2", {}).get(_TIFF_BITS_PER_SAMPLE)
    if declared:
        return int(declared[0] if isinstance(declared, tuple) else declared)
    if image.mode.startswith("I;16") or image.format == "PNG":  # PNG tops out at 16 bits
        return 16
    return 32


def _reason(exc: Exception) -> str:
    message = str(exc)
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        pixels = re.search(r"\((\d+) pixels\)", message)
        count = pixels.group(1) if pixels else "too many"
        return f"decompression bomb: {count} pixels exceeds the {Image.MAX_IMAGE_PIXELS} limit"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image (cannot identify image file)"
    if "truncated" in message:
        return "truncated image file"
    if isinstance(exc, OSError) and exc.strerror:  # missing file, permissions, a folder
        return exc.strerror.lower()
    return f"corrupt image data ({type(exc).__name__}: {message[:120]})"
