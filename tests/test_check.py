"""`quorum check` on real tiny images: a mislabelled file, planted copies (a conflict, a leak, one in the
unlabelled folder), odd images; and DATA the same, byte for byte, afterwards."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from image_factory import write_good_images
from PIL import Image

from quorum.cli import main
from quorum.data import check as look

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py
TINTS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 200)}


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """DATA with 10 images per colour class plus: a red image filed under blue (mislabelled), a copy of
    a green image filed under red (a conflict), a copy within blue split across train and val (a leak),
    a tiny and a blank image; an unlabelled folder holding a copy of a labelled image."""
    root = tmp_path_factory.mktemp("check")
    data = root / "data"
    for index, (label, tint) in enumerate(TINTS.items()):
        write_good_images(data / label, 10, size=(48, 40), tint=tint, seed=index)
    write_good_images(root / "stray", 1, size=(48, 40), tint=TINTS["red"], seed=7)[0].rename(data / "blue" / "odd.png")
    shutil.copy(data / "green" / "good_01_000.png", data / "red" / "copied.png")
    shutil.copy(data / "blue" / "good_02_002.png", data / "blue" / "again.png")
    Image.new("RGB", (10, 12), (200, 30, 30)).save(data / "red" / "tiny.png")
    Image.fromarray(np.full((40, 48, 3), 30, np.uint8)).save(data / "green" / "blank.png")
    models = root / "models"
    models.mkdir()
    pd.DataFrame({"path": ["blue/good_02_002.png", "blue/again.png"], "label": ["blue", "blue"],
                  "subset": ["train", "val"], "reason": ["", ""]}).to_csv(models / "split.csv", index=False)
    unlabelled = root / "unlabelled"
    unlabelled.mkdir()
    shutil.copy(data / "red" / "good_00_004.png", unlabelled / "seen.png")
    before = snapshot(data)
    out = root / "out"
    result = CliRunner().invoke(main, ["check", str(data), "--unlabelled", str(unlabelled), "--out", str(out),
                                       "--models-dir", str(models), "--image-size", "64", "--folds", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    return data, before, out, result


def rows(out: Path, issue: str) -> pd.DataFrame:
    table = pd.read_csv(out / "check.csv", keep_default_na=False)
    assert table.columns.tolist() == look.COLUMNS
    return table[table.issue == issue]


def test_the_mislabelled_files_are_among_the_first_label_issues_with_their_true_class(checked):
    _, _, out, _ = checked
    top = rows(out, "label").head(4)  # also doubted: the green original of the copy filed under red, and tiny.png
    suggested = dict(zip(top.path, top.suggested_label))
    assert suggested["blue/odd.png"] == "red" and suggested["red/copied.png"] == "green"


def test_planted_copies_are_a_conflict_a_leak_and_an_unlabelled_copy(checked):
    _, _, out, _ = checked
    conflict = rows(out, "conflict")
    assert conflict[["path", "other_path", "suggested_label"]].values.tolist() == [
        ["red/copied.png", "green/good_01_000.png", "green"]]
    assert conflict.score.astype(float).tolist() == [1.0] and "exact copy" in conflict.detail.iloc[0]
    leak = rows(out, "leak")
    assert sorted([*leak[["path", "other_path"]].values[0]]) == ["blue/again.png", "blue/good_02_002.png"]
    assert rows(out, "duplicate").empty  # the leak is not also counted as a plain duplicate
    copy = rows(out, "unlabelled copy")
    assert copy[["path", "other_path"]].values.tolist() == [["red/good_00_004.png", str(out.parent / "unlabelled" / "seen.png")]]


def test_odd_images_and_the_page(checked):
    _, _, out, result = checked
    assert rows(out, "tiny").path.tolist() == ["red/tiny.png"]
    assert rows(out, "blank").path.tolist() == ["green/blank.png"]
    page = (out / "index.html").read_text()
    assert page.count("data:image/jpeg;base64,") >= 6 and "<h2>Images per class</h2>" in page
    assert f"Wrote {out}:" in result.stderr and "1 conflict" in result.stderr


def test_data_is_unchanged_byte_for_byte(checked):
    data, before, out, _ = checked
    assert snapshot(data) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["data", "models", "out", "stray", "unlabelled"]


def test_a_clean_folder_has_no_copies_or_odd_images(tmp_path):
    data = tmp_path / "data"
    for index, (label, tint) in enumerate(TINTS.items()):
        write_good_images(data / label, 6, size=(48, 40), tint=tint, seed=index)
    paths = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.*"))
    assert look.odd_images(data, paths) == []
    digests = look.hashes(data, paths)
    assert look.copies(digests, np.eye(len(paths))) == []  # distinct files, orthogonal features
    os.utime(data / paths[0], ns=(0, 0))  # the hash reads content, not metadata
    assert look.hashes(data, paths) == digests
