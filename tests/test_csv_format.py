"""Every CSV quorum writes reads back exactly, whatever the file and class names hold (`\\r`, `\\n`, commas,
quotes, unicode), and no text cell starts like a spreadsheet formula (OWASP's CSV-injection advice)."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import quorum
from image_factory import write_labelled_folder
from quorum import files
from quorum.data.pseudo_labels import read_pseudo_labels
from quorum.data.split import load_or_make_split
from quorum.predict.review import review
from quorum.predict.table import (
    MemberOutputs,
    read_predictions,
    to_frame,
    write_predictions,
)

AWKWARD = ["a\rb.png", "c\nd.png", 'e,"f".png', "g\r\nh.png", "plain.png"]
FORMULAS = ["=HYPERLINK(\"x\").png", "+1.png", "-2.png", "@SUM(1).png", "\tt.png", "\rr.png", "'q.png"]
NAMES = ["m0", "=m1", "m2"]


def disagreeing_frame(folder: Path, paths: list[str], classes: tuple[str, ...]) -> pd.DataFrame:
    """A predictions table for `folder`'s files where two of three members agree on every row (no model runs)."""
    probs = np.zeros((3, len(paths), len(classes)), dtype=np.float32)
    for row in range(len(paths)):
        first = row % len(classes)
        probs[:, row, first] = 0.8
        probs[2, row] = 0.0
        probs[2, row, (first + 1) % len(classes)] = 0.8
    outputs = MemberOutputs(probs, np.ones((3, len(paths)), dtype=bool), [None] * len(paths), [""] * len(paths))
    frame = to_frame(paths, NAMES, classes, outputs, tie_breaker=0, with_probs=True, min_agreement=1.0)
    frame.attrs.update(folder=str(folder), members=NAMES)
    return frame


def write_files(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(name.encode())


def cells(path: Path) -> list[str]:
    """Every cell of a CSV as a spreadsheet would split it (RFC 4180 quoting)."""
    with open(path, newline="", encoding="utf-8") as file:
        return [cell for row in csv.reader(file) for cell in row]


def test_predictions_csv_round_trips_names_with_cr_lf_comma_and_quote(tmp_path):
    write_files(tmp_path / "images", AWKWARD)
    frame = disagreeing_frame(tmp_path / "images", AWKWARD, ("cat", "dog\r", "fox,\"x\""))
    write_predictions(frame, tmp_path / "preds.csv")
    back = read_predictions(tmp_path / "preds.csv")
    assert back["path"].tolist() == AWKWARD
    pd.testing.assert_frame_equal(back, frame, check_exact=False, atol=1e-6)


def test_split_still_matches_after_a_file_with_cr_in_its_name(tmp_path):
    data = write_labelled_folder(tmp_path / "labelled", per_class=4, classes=2)
    red = next(p for p in sorted(data.iterdir()))
    for name, image in zip(["x\ry.png", "n\nl.png", "=c,\"q\".png"], sorted(red.iterdir())):
        shutil.copy(image, red / name)
    split, new = load_or_make_split(data, tmp_path / "models", 0.25, 0)
    again, new_again = load_or_make_split(data, tmp_path / "models", 0.25, 0)
    assert new and not new_again and again.digest == split.digest
    assert {f"{red.name}/x\ry.png", f"{red.name}/=c,\"q\".png"} <= set(again.table.path)


def test_no_text_cell_starts_like_a_formula_and_every_name_reads_back(tmp_path):
    write_files(tmp_path / "images", FORMULAS)
    classes = ("=cmd|' /C calc'!A0", "-x", "@y")
    frame = disagreeing_frame(tmp_path / "images", FORMULAS, classes)
    write_predictions(frame, tmp_path / "preds.csv")
    written = cells(tmp_path / "preds.csv")
    assert not [cell for cell in written if cell.startswith(files.FORMULA_START)]
    assert "'=HYPERLINK(\"x\").png" in written and "''q.png" in written and "'=m1_prediction" in written
    back = read_predictions(tmp_path / "preds.csv")
    assert back["path"].tolist() == FORMULAS and set(back["prediction"]) <= set(classes)
    pd.testing.assert_frame_equal(back, frame, check_exact=False, atol=1e-6)


def test_numbers_stay_numbers():
    frame = pd.DataFrame({"name": ["-1", "a"], "value": [-0.5, 1.0], "count": [-3, 2]})
    text = files.csv_text(frame)
    assert text == "name,value,count\r\n'-1,-0.5,-3\r\na,1.0,2\r\n"


def test_every_csv_is_written_and_read_through_quorum_files():
    """So every CSV gets the quoting and the formula prefix, and every reader takes the prefix off.
    Allowed: the split digest (a hash of text, never a file) and --labels (the user's own CSV)."""
    allowed = {("data/split.py", "to_csv"), ("report/sources.py", "read_csv")}
    src = Path(quorum.__file__).parent
    found = {(path.relative_to(src).as_posix(), call) for path in src.rglob("*.py") if path.name != "files.py"
             for call in re.findall(r"\b(?:pd\.read_csv|\.to_csv|csv\.writer|csv\.reader)\b", path.read_text())}
    found = {(path, call.split(".")[-1]) for path, call in found}
    assert found <= allowed, found - allowed


# --- randomized: awkward names through every reader ---------------------------------------------------------

awkward_text = st.text(alphabet=st.sampled_from(list("\r\n,\"'=+-@ \té中ab")), min_size=1, max_size=8)
file_names = awkward_text.filter(lambda name: name not in (".", "..")).map(lambda name: name + ".png")
class_names = awkward_text.filter(lambda name: name not in (".", "..") and not name.startswith("."))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(paths=st.lists(file_names, min_size=1, max_size=6, unique=True),
       classes=st.lists(class_names, min_size=2, max_size=3, unique=True))
def test_awkward_names_read_back_through_read_predictions_review_and_pseudo_labels(tmp_path_factory, paths, classes):
    root = tmp_path_factory.mktemp("awkward")
    classes = tuple(sorted(classes))
    write_files(root / "images", paths)
    frame = disagreeing_frame(root / "images", paths, classes)
    csv_path = root / "preds.csv"
    write_predictions(frame, csv_path)

    back = read_predictions(csv_path)
    assert back["path"].tolist() == paths
    pd.testing.assert_frame_equal(back, frame, check_exact=False, atol=1e-6)

    pseudo = read_pseudo_labels(csv_path, classes, min_agreement=0.6)
    expected = [(str(root / "images" / path), classes.index(label)) for path, label in zip(paths, frame["prediction"])]
    assert pseudo.items == expected

    result = review(csv_path, root / "review")
    listing = files.read_csv(root / "review" / "review.csv", keep_default_na=False, dtype=str)
    assert result.flagged == len(paths)
    assert listing["source"].tolist() == [str(root / "images" / path) for path in paths]
    assert listing["prediction"].tolist() == frame["prediction"].tolist()
    assert listing["=m1"].tolist() == frame["=m1_prediction"].tolist()
    for name in listing["file"]:
        assert (root / "review" / name).is_file()

