"""model.json is checked against its schema, and against model.onnx's input: an edited value is one
`Error:` line naming the file, the key and the fix, never a silent change of every label."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from image_factory import write_good_images
from quorum.cli import main
from quorum.errors import QuorumError
from quorum.models import onnx_export
from quorum.models.bundle import MODEL_JSON, read_info

FIX = "restore the file or fine-tune the model again"
EDITS = {  # key: (edited value, what the error says it must be)
    "image_size": [(0, "a positive whole number of pixels"), ("64", "a positive whole number of pixels"),
                   (True, "a positive whole number of pixels"), (32.5, "a positive whole number of pixels")],
    "mean": [([0.5, 0.5], "a list of 3 numbers, one per RGB channel"),
             (["a", 0.5, 0.5], "a list of 3 numbers, one per RGB channel")],
    "std": [([0, 0, 0], "a list of 3 numbers above 0, one per RGB channel"),
            ([0.2, -0.2, 0.2], "a list of 3 numbers above 0, one per RGB channel")],
    "crop_fraction": [(5, "a number above 0 and at most 1"), (0, "a number above 0 and at most 1")],
    "interpolation": [("cubic", "one of bilinear, bicubic, nearest")],
    "classes": [([], "a non-empty list of distinct class names"), (["cat", "cat", "fox"],
                "a non-empty list of distinct class names"), ([1, 2, 3], "a non-empty list of distinct class names")],
}
CASES = [(key, value, must_be) for key, edits in EDITS.items() for value, must_be in edits]


@pytest.fixture
def model_dir(tmp_path, tiny_models):
    path = tmp_path / "models" / "tinyvgg-32"
    shutil.copytree(tiny_models / "tinyvgg-32", path)
    return path


def edit(model_dir, **values) -> None:
    raw = json.loads((model_dir / MODEL_JSON).read_text())
    raw.update(values)
    raw = {key: value for key, value in raw.items() if value is not None}
    (model_dir / MODEL_JSON).write_text(json.dumps(raw))


@pytest.mark.parametrize("key, value, must_be", CASES, ids=[f"{key}={value!r}" for key, value, _ in CASES])
def test_an_edited_value_is_refused_naming_the_file_the_key_and_the_fix(model_dir, key, value, must_be):
    edit(model_dir, **{key: value})
    with pytest.raises(QuorumError) as error:
        read_info(model_dir)
    assert str(error.value) == f"{model_dir / MODEL_JSON}: {key} is {json.dumps(value)}; it must be {must_be}: {FIX}"


def test_a_missing_key_and_a_json_that_is_no_object_are_refused(model_dir):
    edit(model_dir, classes=None)
    with pytest.raises(QuorumError, match=f"has no classes \\(it must be a non-empty list of distinct class names\\): "
                                          f"{FIX}$"):
        read_info(model_dir)
    (model_dir / MODEL_JSON).write_text("[1, 2]")
    with pytest.raises(QuorumError, match=f"is not a JSON object: {FIX}$"):
        read_info(model_dir)


def test_predict_says_so_in_one_line_and_writes_nothing(model_dir, tmp_path):
    write_good_images(tmp_path / "images", 2)
    edit(model_dir, std=[0, 0, 0])
    out = tmp_path / "p.csv"
    result = CliRunner().invoke(main, ["predict", str(tmp_path / "images"), "--models-dir", str(model_dir.parent),
                                       "--out", str(out), "--workers", "0"])
    assert result.exit_code == 1 and not out.exists()
    assert result.output == (f"Error: {model_dir / MODEL_JSON}: std is [0, 0, 0]; it must be a list of 3 numbers "
                             f"above 0, one per RGB channel: {FIX}\n")


def test_an_image_size_that_model_onnx_does_not_take_is_refused(model_dir, tmp_path):
    onnx_export.export_onnx(model_dir)
    edit(model_dir, image_size=40)
    write_good_images(tmp_path / "images", 2)
    out = tmp_path / "p.csv"
    result = CliRunner().invoke(main, ["predict", str(tmp_path / "images"), "--models-dir", str(model_dir.parent),
                                       "--out", str(out), "--workers", "0", "--engine", "onnx"])
    assert result.exit_code == 1 and not out.exists()
    assert result.output == (f"Error: {model_dir / MODEL_JSON}: image_size is 40 but {model_dir / 'model.onnx'} "
                             f"takes 32x32 pixels: {FIX}\n")
