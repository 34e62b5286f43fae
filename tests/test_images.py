import warnings

import numpy as np
import pytest
from PIL import Image

from image_factory import (
    AWKWARD_SIZE,
    NOT_IMAGES,
    UNREADABLE,
    write_awkward_images,
    write_corrupt_exif_jpeg,
    write_good_images,
    write_not_images,
)
from quorum.data.images import (
    UnreadableImage,
    image_extensions,
    load_rgb,
    scan_images,
)
from quorum.errors import QuorumError

AWKWARD_NAMES = [
    "cmyk_jpeg", "gray16_png", "gray16_tiff", "float_tiff", "palette_transparent_png",
    "rgba_png", "la_png", "one_bit_png", "exif_rotated_jpeg", "animated_gif",
    "multipage_tiff", "uppercase_png", "gray_bmp", "gray_webp", "tga", "ppm", "jfif",
]
EXPECTED_REASONS = {
    "empty": "empty file",
    "truncated_jpeg": "truncated image file",
    "truncated_png": "truncated image file",
    "text_as_jpg": "not an image (cannot identify image file)",
    "decompression_bomb": "decompression bomb: 100000000 pixels exceeds the 89478485 limit",
}


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    return write_awkward_images(tmp_path_factory.mktemp("awkward"))


def pixel(image, x, y):
    return tuple(int(v) for v in image.getpixel((x, y)))


# --- discovery -------------------------------------------------------------------------


def test_scan_images_recurses_sorts_by_relative_path_and_skips_hidden(tmp_path):
    root = tmp_path / ".cache" / "photos"  # a hidden folder *above* the root is fine
    wanted = ["Z.png", "a.JPG", "b.jpeg", "sub/c.webp", "sub/deeper/d.TIFF", "sub/e.gif", "sub/f.tga"]
    unwanted = [".hidden.png", ".thumbs/f.png", "sub/.git/g.png", "notes.txt", "sub/readme.md", "bmp"]
    for name in wanted + unwanted:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"not checked by discovery")

    scan = scan_images(root)

    # Code-point order: "Z" < "a", and "sub/..." after the top-level files.
    assert [p.relative_to(root).as_posix() for p in scan.images] == wanted
    assert all(p.is_absolute() == root.is_absolute() for p in scan.images)
    assert scan.skipped == {"hidden": 1, "hidden folder": 2, ".txt": 1, ".md": 1, "no extension": 1}
    assert scan.summary() == "skipped 4 files (1 .md, 1 .txt, 1 with no extension, 1 hidden) and 2 hidden folders"


def test_every_extension_pillow_opens_is_an_image_and_nothing_else():
    opened = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    assert image_extensions() == opened
    assert {".tga", ".ppm", ".jfif", ".jpg", ".png", ".webp"} <= image_extensions()
    assert ".pdf" not in image_extensions()  # Pillow only writes PDFs


def test_links_to_folders_are_followed_once_and_every_other_file_is_counted(tmp_path):
    write_good_images(tmp_path / "photos" / "elsewhere", 2)
    write_good_images(tmp_path / "photos", 3)
    write_not_images(tmp_path / "photos", linked=tmp_path / "photos" / "elsewhere")
    (tmp_path / "photos" / "out").symlink_to(tmp_path, target_is_directory=True)  # up and out: never followed
    scan = scan_images(tmp_path / "photos")
    assert [p.relative_to(tmp_path / "photos").as_posix() for p in scan.images] == [
        "elsewhere/good_00_000.png", "elsewhere/good_00_001.jpg", "good_00_000.png", "good_00_001.jpg",
        "good_00_002.png", "linked/good_00_000.png", "linked/good_00_001.jpg"]
    assert scan.skipped == {**NOT_IMAGES, "folder link loop": 2, "link out of the folder": 1}
    assert scan.summary() == ("skipped 4 files (1 .json, 2 .txt, 1 hidden) and 2 folder link loops and "
                              "1 link out of the folder")


def test_scan_images_on_a_missing_folder_names_it(tmp_path):
    with pytest.raises(QuorumError, match="image folder not found: .*nowhere"):
        scan_images(tmp_path / "nowhere")


# --- decoding valid files --------------------------------------------------------------


def test_good_images_load_as_rgb_of_their_size(tmp_path):
    paths = write_good_images(tmp_path, 4, size=(33, 21))
    assert {p.suffix for p in paths} == {".png", ".jpg"}
    images = [load_rgb(p) for p in paths]
    assert all(im.mode == "RGB" and im.size == (33, 21) for im in images)
    assert len({im.tobytes() for im in images}) == 4  # varied content, not copies


@pytest.mark.parametrize("name", AWKWARD_NAMES)
def test_awkward_but_valid_files_load_as_8bit_rgb(awkward, name):
    image = load_rgb(awkward[name])
    assert image.mode == "RGB"
    expected = AWKWARD_SIZE[::-1] if name == "exif_rotated_jpeg" else AWKWARD_SIZE
    assert image.size == expected


def test_the_factory_covers_every_case_exactly_once(awkward):
    assert set(awkward) == set(AWKWARD_NAMES) | UNREADABLE


@pytest.mark.parametrize("name", ["gray16_png", "gray16_tiff", "float_tiff"])
def test_high_bit_depth_is_scaled_not_clipped(awkward, name):
    image = load_rgb(awkward[name])
    # Columns hold 0, half scale and full scale (65535 / 32768 / 0, or 1.0 / 0.5 / 0.0).
    assert [pixel(image, x, 5) for x in (0, 15, 39)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


@pytest.mark.parametrize(
    "name, opaque_colour",
    [("palette_transparent_png", (255, 0, 0)), ("rgba_png", (0, 0, 255)), ("la_png", (128, 128, 128))],
)
def test_transparent_parts_become_white(awkward, name, opaque_colour):
    image = load_rgb(awkward[name])
    assert pixel(image, 2, 2) == (255, 255, 255)  # the hidden colour there is black
    assert pixel(image, 37, 27) == opaque_colour


def test_exif_orientation_is_applied(awkward):
    image = load_rgb(awkward["exif_rotated_jpeg"])
    # Stored: red top-left quadrant. Orientation 6 turns it clockwise, to the top right.
    assert np.allclose(pixel(image, 28, 2), (255, 0, 0), atol=12)
    assert np.allclose(pixel(image, 2, 2), (255, 255, 255), atol=12)


@pytest.mark.parametrize(
    "name, colour",
    [("cmyk_jpeg", (255, 0, 0)), ("animated_gif", (255, 0, 0)), ("multipage_tiff", (0, 255, 0))],
)
def test_colour_survives_and_first_frame_is_used(awkward, name, colour):
    assert np.allclose(pixel(load_rgb(awkward[name]), 20, 15), colour, atol=12)


@pytest.mark.parametrize("name, values", [("one_bit_png", (0, 255)), ("gray_bmp", (50, 200)), ("gray_webp", (50, 200))])
def test_grayscale_becomes_equal_rgb_channels(awkward, name, values):
    image = load_rgb(awkward[name])
    assert pixel(image, 2, 2) == (values[0],) * 3
    assert pixel(image, 37, 27) == (values[1],) * 3


def test_corrupt_exif_is_read_as_far_as_it_goes_without_a_warning(tmp_path):
    """Pillow's warnings about metadata would land on stderr in the middle of a progress bar."""
    path = write_corrupt_exif_jpeg(tmp_path / "camera.jpg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = load_rgb(path)
    assert image.size == AWKWARD_SIZE[::-1]  # the orientation tag still applies
    assert [str(w.message) for w in caught] == []


def test_the_image_is_fully_decoded_and_detached_from_the_file(tmp_path):
    [path] = write_good_images(tmp_path, 1)
    image = load_rgb(path)
    path.unlink()
    assert len(image.tobytes()) == 40 * 30 * 3


# --- refusing broken files -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_broken_files_raise_with_a_short_reason(awkward, name):
    with pytest.raises(UnreadableImage) as caught:
        load_rgb(awkward[name])
    assert caught.value.reason == str(caught.value) == EXPECTED_REASONS[name]
    assert caught.value.path == awkward[name]


def test_a_missing_file_is_unreadable_too(tmp_path):
    with pytest.raises(UnreadableImage, match="no such file or directory"):
        load_rgb(tmp_path / "gone.png")


def test_bomb_check_does_not_change_the_global_warning_filters(awkward):
    before = list(warnings.filters)
    with pytest.raises(UnreadableImage):
        load_rgb(awkward["decompression_bomb"])
    assert warnings.filters == before
