import csv
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"
SCRIPT = REPO / "scripts" / "make_sample_data.py"
DEBIAN_SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = {
    "T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot",
}


def read_labels(csv_path: Path) -> list[dict]:
    with open(csv_path, newline="") as file:
        return list(csv.DictReader(file))


def test_labelled_has_30_grayscale_pngs_in_each_of_10_classes():
    folders = {p.name: p for p in (SAMPLE / "labelled").iterdir()}
    assert set(folders) == CLASSES
    for folder in folders.values():
        files = list(folder.iterdir())
        assert len(files) == 30 and all(f.suffix == ".png" for f in files), folder
        for file in files:
            with Image.open(file) as image:
                assert (image.format, image.mode, image.size) == ("PNG", "L", (28, 28)), file


def test_labels_csv_covers_exactly_the_unlabelled_images_100_per_class():
    files = {p.name for p in (SAMPLE / "unlabelled").iterdir()}
    rows = read_labels(SAMPLE / "unlabelled_labels.csv")
    assert len(files) == 1000 and all(name.endswith(".png") for name in files)
    assert [row["path"] for row in rows] == sorted(files)  # one row each, in name order
    assert Counter(row["label"] for row in rows) == {name: 100 for name in CLASSES}


def test_missing_source_names_the_debian_package(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--source", str(tmp_path / "none"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert "apt-get install dataset-fashion-mnist" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not DEBIAN_SOURCE.is_dir(), reason="needs apt-get install dataset-fashion-mnist")
def test_script_regenerates_the_committed_files_byte_for_byte(tmp_path):
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], check=True, capture_output=True)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(SAMPLE) for p in SAMPLE.rglob("*") if p.is_file() and p.name != "README.md")
    assert generated == committed
    assert all((tmp_path / p).read_bytes() == (SAMPLE / p).read_bytes() for p in generated)
