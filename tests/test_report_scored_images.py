"""A report says which images it scored: its titles and captions, and what it passed over on --data."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pandas as pd
import pytest

from image_factory import write_good_images
from quorum.report.build import build_report
from quorum.report.html import figures, write_report


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


class _Texts(HTMLParser):
    """The page's headings and paragraphs in order, as (tag, text)."""

    def __init__(self, page: str):
        super().__init__()
        self.open, self.texts = [], []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.open.append(tag)
        if tag in ("h2", "h3", "p"):
            self.texts.append((tag, ""))

    def handle_endtag(self, tag):
        if self.open:
            self.open.pop()

    def handle_data(self, data):
        if self.texts and self.texts[-1][0] in self.open:
            tag, text = self.texts[-1]
            self.texts[-1] = (tag, text + data)


SECTIONS_ON_SCORED = ("What the ensemble adds", "How far to trust the vote", "Calibration", "Confusion matrices",
                      "Per class", "Accuracy against time")


def caption_of(texts: list[tuple[str, str]], heading: str) -> str:
    at = texts.index(("h2", heading))
    return next(text for tag, text in texts[at + 1:] if tag == "p")


def test_every_title_and_caption_names_the_images_scored(tiny_models, test_folder, one_thread, tmp_path):
    report = build_report(tiny_models, data=test_folder, timing=True, workers=0, quiet=True)
    assert report.source.startswith(f"the labelled folder {test_folder}")
    assert report.ensemble is not None and report.galleries["wrong"], "the page should have a gallery to title"
    written = write_report(report, tmp_path / "out")
    texts = _Texts(written[-1].read_text()).texts
    assert not [text for _, text in texts if "validation images" in text.lower()]
    for heading in SECTIONS_ON_SCORED:
        assert report.source in caption_of(texts, heading), heading
    assert ("h3", f"The vote's mistakes on {report.source}, most confident first") in texts
    for name, figure in figures(report).items():
        if name != "training_curves.png":  # the runs' own validation curves, whatever the report scored
            assert report.source in figure.get_suptitle(), name



def test_the_training_curves_star_the_epoch_model_json_kept(make_model, test_folder, one_thread, tmp_path):
    # Epochs 2 and 4 tie on val accuracy; training kept 4, the lower val loss (issue 23 item 5).
    model_dir = make_model(tmp_path / "models", "tinyvgg-32", "tinyvgg", 32)
    info = json.loads((model_dir / "model.json").read_text())
    (model_dir / "model.json").write_text(json.dumps({**info, "best_epoch": 4}))
    pd.DataFrame({"epoch": [1, 2, 3, 4], "phase": [1, 1, 2, 2], "train_loss": [1.2, 0.9, 0.7, 0.6],
                  "train_accuracy": [0.4, 0.6, 0.7, 0.8], "val_loss": [1.1, 0.9, 0.85, 0.8],
                  "val_accuracy": [0.5, 0.7, 0.6, 0.7]}).to_csv(model_dir / "history.csv", index=False)
    report = build_report(tmp_path / "models", data=test_folder, timing=False, workers=0, quiet=True)
    figure = figures(report)["training_curves.png"]
    [star] = [line for ax in figure.axes for line in ax.get_lines() if line.get_label() == "kept epoch"]
    assert list(star.get_xdata()) == [4] and list(star.get_ydata()) == [0.7]
