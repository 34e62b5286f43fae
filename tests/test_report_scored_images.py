"""A report says which images it scored: its titles and captions, and what it passed over on --data."""

from __future__ import annotations

import pytest
from image_factory import write_good_images

from quorum.report.build import build_report


@pytest.fixture
def test_folder(tmp_path):
    for seed, name in enumerate(("cat", "dog", "fox")):
        write_good_images(tmp_path / "test" / name, 4, size=(48, 40), seed=seed)
    (tmp_path / "test" / "README.md").write_text("not an image")
    (tmp_path / "test" / "cat" / "notes.txt").write_text("not an image")
    return tmp_path / "test"


def test_data_says_what_it_skipped_as_predict_does(tiny_models, test_folder, one_thread, capsys):
    build_report(tiny_models, data=test_folder, timing=False, workers=0)
    said = capsys.readouterr().err
    assert f"Not images, so not scored: skipped 2 files (1 .md, 1 .txt) under {test_folder}" in said
