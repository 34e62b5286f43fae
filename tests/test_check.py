"""`quorum check` on real images (sample_data's Fashion-MNIST): a mislabelled file, planted copies (a conflict,
a leak, a near duplicate, one in the unlabelled folder), odd images; and DATA the same, byte for byte, afterwards."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from quorum.cli import main
from quorum.data import check as look
from quorum.report.check import run_check

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py
SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "labelled"
CLASSES = ("Bag", "Sneaker", "Trouser")
PER_CLASS = 12


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def sample(data: Path) -> dict[str, list[str]]:
    """12 real Fashion-MNIST images (28 px) of each of three classes copied into DATA; their names per class."""
    names = {}
    for label in CLASSES:
        names[label] = sorted(p.name for p in (SAMPLE / label).iterdir())[:PER_CLASS]
        (data / label).mkdir(parents=True)
        for name in names[label]:
            shutil.copy2(SAMPLE / label / name, data / label / name)
    return names


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """DATA of real images plus: a trouser filed under Bag (mislabelled), a copy of a sneaker filed under
    Trouser (a conflict), a copy within Bag split across train and val (a leak), a brightened JPEG of a
    bag beside it (a near duplicate), a tiny, a blank and an unreadable image; an unlabelled folder holding a copy of a
    labelled image."""
    root = tmp_path_factory.mktemp("check")
    data = root / "data"
    names = sample(data)
    trouser, sneaker, bag, other_bag, seen = (names["Trouser"][0], names["Sneaker"][0], names["Bag"][1],
                                              names["Bag"][2], names["Sneaker"][3])
    (data / "Trouser" / trouser).rename(data / "Bag" / trouser)
    shutil.copy(data / "Sneaker" / sneaker, data / "Trouser" / "copied.png")
    shutil.copy(data / "Bag" / bag, data / "Bag" / "again.png")
    brighter = np.asarray(Image.open(data / "Bag" / other_bag), dtype=np.int16) + 4
    Image.fromarray(np.clip(brighter, 0, 255).astype(np.uint8)).save(data / "Bag" / "near.jpg", quality=90)
    Image.new("RGB", (10, 12), (200, 30, 30)).save(data / "Trouser" / "tiny.png")
    (data / "Bag" / "broken.png").write_bytes(b"not a picture")
    Image.fromarray(np.full((40, 48, 3), 30, np.uint8)).save(data / "Sneaker" / "blank.png")
    models = root / "models"
    models.mkdir()
    pd.DataFrame({"path": [f"Bag/{bag}", "Bag/again.png"], "label": ["Bag", "Bag"],
                  "subset": ["train", "val"], "reason": ["", ""]}).to_csv(models / "split.csv", index=False)
    unlabelled = root / "unlabelled"
    unlabelled.mkdir()
    shutil.copy(data / "Sneaker" / seen, unlabelled / "seen.png")
    before = snapshot(data)
    out = root / "out"
    result = CliRunner().invoke(main, ["check", str(data), "--unlabelled", str(unlabelled), "--out", str(out),
                                       "--models-dir", str(models), "--image-size", "64", "--folds", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    planted = {"trouser": f"Bag/{trouser}", "sneaker": f"Sneaker/{sneaker}", "bag": f"Bag/{bag}",
               "other_bag": f"Bag/{other_bag}", "seen": f"Sneaker/{seen}"}
    return data, before, out, result, planted


def rows(out: Path, issue: str) -> pd.DataFrame:
    table = pd.read_csv(out / "check.csv", keep_default_na=False)
    assert table.columns.tolist() == look.COLUMNS
    return table[table.issue == issue]


def test_the_mislabelled_file_is_the_first_label_issue_with_its_true_class_and_no_clean_one_is(checked):
    *_, out, _, planted = checked
    labels = rows(out, "label")
    assert labels.iloc[0][["path", "suggested_label"]].tolist() == [planted["trouser"], "Trouser"]
    assert set(labels.path) <= {planted["trouser"], "Trouser/copied.png"}  # the sneaker copy is mislabelled too


def test_planted_copies_are_a_conflict_a_leak_a_duplicate_and_an_unlabelled_copy(checked):
    *_, out, _, planted = checked
    conflict = rows(out, "conflict")
    assert conflict[["path", "other_path", "suggested_label"]].values.tolist() == [
        ["Trouser/copied.png", planted["sneaker"], "Sneaker"]]
    assert conflict.score.astype(float).tolist() == [1.0] and "exact copy" in conflict.detail.iloc[0]
    leak = rows(out, "leak")
    assert leak[["path", "other_path"]].values.tolist() == [["Bag/again.png", planted["bag"]]]
    duplicate = rows(out, "duplicate")  # the leak is not also counted as a plain duplicate
    assert duplicate[["path", "other_path"]].values.tolist() == [["Bag/near.jpg", planted["other_bag"]]]
    assert "near copy (pixels" in duplicate.detail.iloc[0]
    copy = rows(out, "unlabelled copy")
    assert copy[["path", "other_path"]].values.tolist() == [[planted["seen"],
                                                             str(out.parent / "unlabelled" / "seen.png")]]


def test_odd_images_and_the_page(checked):
    *_, out, result, _ = checked
    assert rows(out, "tiny").path.tolist() == ["Trouser/tiny.png"]
    assert rows(out, "blank").path.tolist() == ["Sneaker/blank.png"]
    assert rows(out, "unreadable")[["path", "detail"]].values.tolist() == [
        ["Bag/broken.png", "not an image (cannot identify image file)"]]
    page = (out / "index.html").read_text()
    assert page.count("data:image/jpeg;base64,") >= 8 and "<h2>Images per class</h2>" in page
    assert f"Wrote {out}:" in result.stderr and "1 conflict" in result.stderr


def test_data_is_unchanged_byte_for_byte(checked):
    data, before, out, *_ = checked
    assert snapshot(data) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["data", "models", "out", "unlabelled"]


def test_a_clean_folder_has_no_copies_or_odd_images(tmp_path):
    data = tmp_path / "data"
    sample(data)
    paths = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.*"))
    odd, thumbs = look.look_at(data, paths)
    assert odd == []
    digests = look.hashes(data, paths)
    assert look.copies(look.Prints(digests, thumbs, np.eye(len(paths)))) == []  # distinct pictures and features
    os.utime(data / paths[0], ns=(0, 0))  # the hash reads content, not metadata
    assert look.hashes(data, paths) == digests


def test_a_class_of_one_image_gets_a_note_instead_of_label_issues(tmp_path):
    data = tmp_path / "data"
    names = sample(data)
    for name in names["Bag"][1:]:
        (data / "Bag" / name).unlink()
    result = run_check(data, tmp_path / "out", models_dir=tmp_path / "models", image_size=32, quiet=True)
    assert result.notes == ["no label issues: a class has a single readable image: "
                            "label issues need at least 2 per class"]
    assert result.findings.issue.tolist() == ["imbalance"] and result.findings.path.tolist() == ["Bag/"]


def test_check_never_deletes_a_partial_folder_it_did_not_make(tmp_path):
    data, users = tmp_path / "data", tmp_path / ".out.partial"
    sample(data)
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, ["check", str(data), "--out", str(tmp_path / "out"), "--models-dir",
                                       str(tmp_path / "models"), "--image-size", "32", "--folds", "3", "--quiet"])
    assert (result.exit_code, result.output) == (1, f"Error: {users} exists and is not a check quorum left "
                                                    "unfinished: move it away, or choose another --out\n")
    assert (users / "notes.txt").read_text() == "mine" and not (tmp_path / "out").exists()
    # One a killed check left (it carries check's mark) is replaced.
    (users / "notes.txt").unlink()
    (users / ".quorum-check-partial").write_text("")
    run_check(data, tmp_path / "out", models_dir=tmp_path / "models", image_size=32, folds=3, quiet=True)
    assert not users.exists() and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["check.csv", "index.html"]


def test_check_refuses_while_another_check_writes_the_same_folder(tmp_path):
    from quorum import files

    data, out = tmp_path / "data", tmp_path / "out"
    sample(data)
    with files.exclusive(tmp_path / ".out.lock", "held by the test"):  # what a running check holds
        result = CliRunner().invoke(main, ["check", str(data), "--out", str(out), "--models-dir",
                                           str(tmp_path / "models"), "--image-size", "32", "--folds", "3", "-q"])
    assert (result.exit_code, result.output) == (1, f"Error: another quorum check is writing {out} now: wait for "
                                                    "it, or choose another --out\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_folder_of_only_unreadable_images_is_listed_not_a_crash(tmp_path):
    data = tmp_path / "data"
    for label, name, content in (("Bag", "empty.jpg", b""), ("Coat", "notes.png", b"not pixels")):
        (data / label).mkdir(parents=True)
        (data / label / name).write_bytes(content)
    result = run_check(data, tmp_path / "out", models_dir=tmp_path / "models", image_size=32, quiet=True)
    assert result.findings.path.tolist() == ["Bag/empty.jpg", "Coat/notes.png"]
    assert result.findings.issue.tolist() == ["unreadable", "unreadable"]
    assert result.notes == ["no label issues: a class has no readable image: label issues need at least 2 per class"]


@pytest.mark.parametrize("unlabelled_files", [{}, {"broken.jpg": b"\xff\xd8 truncated"}])
def test_an_unlabelled_folder_without_a_readable_image_is_no_crash(tmp_path, unlabelled_files):
    data, unlabelled = tmp_path / "data", tmp_path / "unlabelled"
    sample(data)
    unlabelled.mkdir()
    for name, content in unlabelled_files.items():
        (unlabelled / name).write_bytes(content)
    result = run_check(data, tmp_path / "out", unlabelled, models_dir=tmp_path / "models", image_size=32, folds=3,
                       quiet=True)
    assert "unlabelled copy" not in result.findings.issue.tolist()
    assert result.findings[result.findings.issue == "unreadable"].path.tolist() == [
        str(unlabelled / name) for name in unlabelled_files]


def test_files_check_passes_over_are_counted_in_a_note(tmp_path):
    """No file is skipped without being counted: a text file, and a link to an image outside the folder."""
    data, unlabelled = tmp_path / "data", tmp_path / "unlabelled"
    names = sample(data)
    (data / "Bag" / "notes.txt").write_text("not pixels")
    (data / "Bag" / "outside.png").symlink_to(SAMPLE / "Coat" / sorted(os.listdir(SAMPLE / "Coat"))[0])
    unlabelled.mkdir()
    shutil.copy(data / "Bag" / names["Bag"][0], unlabelled / "a.png")
    (unlabelled / "labels.json").write_text("{}")
    result = run_check(data, tmp_path / "out", unlabelled, models_dir=tmp_path / "models", image_size=32, folds=3,
                       quiet=True)
    assert result.notes[:2] == [f"Not images, so not checked: skipped 1 file (1 .txt) and 1 link out of the folder "
                                f"under {data}", f"Not images, so not checked: skipped 1 file (1 .json) under "
                                                 f"{unlabelled}"]
    assert "Not images, so not checked" in (tmp_path / "out" / "index.html").read_text()


def test_a_named_pipe_called_like_an_image_is_unreadable_not_a_hang(tmp_path):
    import threading

    data = tmp_path / "data"
    sample(data)
    pipe = data / "Bag" / "pipe.png"
    os.mkfifo(pipe)
    done = []
    worker = threading.Thread(target=lambda: done.append(run_check(data, tmp_path / "out", models_dir=tmp_path / "m",
                                                                   image_size=32, folds=3, quiet=True)), daemon=True)
    worker.start()
    worker.join(30)  # 3 s on an idle machine
    hung = worker.is_alive()
    if hung:  # waiting on the pipe: give it a writer, so the thread (and pytest) can finish
        os.close(os.open(pipe, os.O_WRONLY))
        worker.join()
    assert not hung, "check waited on a named pipe"
    rows = done[0].findings
    assert rows[rows.path == "Bag/pipe.png"][["issue", "detail"]].values.tolist() == [["unreadable", "empty file"]]
