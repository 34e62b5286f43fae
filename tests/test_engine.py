"""Engines: model.onnx made and checked, ONNX Runtime beside torch, the choice between them, the report's timing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from image_factory import COLOUR_CLASSES, write_good_images, write_labelled_folder
from quorum.calibration import calibrate
from quorum.cli import main
from quorum.data.images import load_rgb, scan_images
from quorum.errors import QuorumError
from quorum.models import bundle, onnx_export
from quorum.models.engine import check_engine, resolve_engine
from quorum.predict.members import (
    load_members,
    member_engines,
    read_members,
    select_models,
)
from quorum.predict.options import PredictOptions
from quorum.predict.pipeline import predict, predict_arrays
from quorum.report.build import build_report

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    write_good_images(folder, 16, size=(64, 48))
    return folder


@pytest.fixture(scope="module")
def trio(tmp_path_factory) -> Path:
    """Three real, different networks, exported. Random weights, but not constant voters: the tinyvgg always
    says dog, the resnet18-32 says dog or fox by image, so the two agree on some images of a batch and not
    on others, and --lazy runs the tie-breaker (resnet18-48, the costliest) on part of a batch."""
    from conftest import save_model

    root = tmp_path_factory.mktemp("trio")
    save_model(root, "a-tinyvgg-32", "tinyvgg", 32, accuracy=0.5, seed=0)
    save_model(root, "b-resnet18-32", "resnet18", 32, accuracy=0.6, seed=3)
    save_model(root, "c-resnet18-48", "resnet18", 48, accuracy=0.9, seed=6)
    for model_dir in select_models(root):
        onnx_export.export_onnx(model_dir)
    return root


def run(folder, models_dir, **options):
    return predict(folder, select_models(models_dir), PredictOptions(workers=0, batch_size=8, probs=True, **options),
                   quiet=True)


# --- model.onnx ------------------------------------------------------------------------------------


def test_model_onnx_runs_in_onnxruntime_alone_and_matches_torch(trio, images, tmp_path):
    """Anyone with onnxruntime, numpy and Pillow can run a bundle: model.json says how to make the pixels."""
    model_dir = trio / "b-resnet18-32"
    script = textwrap.dedent("""
        import json, sys
        from pathlib import Path
        import numpy as np, onnxruntime
        from PIL import Image
        model_dir, image = Path(sys.argv[1]), sys.argv[2]
        info = json.loads((model_dir / "model.json").read_text())
        size = info["image_size"]
        picture = Image.open(image).convert("RGB")
        # Resize the short side to size / crop_fraction, centre-crop, scale to 0..1, normalise.
        short = int(size / info["crop_fraction"])  # floored, as timm does
        w, h = picture.size
        w, h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        filters = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
        picture = picture.resize((w, h), filters[info["interpolation"]])
        left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
        pixels = np.asarray(picture.crop((left, top, left + size, top + size)), np.float32) / 255
        x = ((pixels - info["mean"]) / info["std"]).transpose(2, 0, 1)[None].astype(np.float32)
        session = onnxruntime.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
        logits = session.run(None, {session.get_inputs()[0].name: x})[0][0]
        assert not any(name.startswith("quorum") for name in sys.modules)
        print(json.dumps((np.exp(logits) / np.exp(logits).sum()).tolist()))
    """)
    image = sorted(images.iterdir())[1]  # a JPEG
    info = bundle.read_info(model_dir)
    done = subprocess.run([sys.executable, "-c", script, str(model_dir), str(image)], capture_output=True, text=True,
                          check=True)
    alone = np.array(json.loads(done.stdout))
    member = load_members([info], torch.device("cpu"))[0]  # torch
    expected = member.run(info.preprocessing.eval_pixels()(load_rgb(image))[None])[0]
    assert np.abs(alone - expected).max() < 1e-4


def test_export_records_the_weights_and_a_new_training_makes_it_stale(trio, tmp_path, make_model):
    model_dir = make_model(tmp_path, "m", "tinyvgg", 32, seed=1)
    assert not onnx_export.is_current(model_dir)
    onnx_export.export_onnx(model_dir)
    assert onnx_export.is_current(model_dir)
    other = make_model(tmp_path / "other", "m", "tinyvgg", 32, seed=2)
    (model_dir / bundle.WEIGHTS).write_bytes((other / bundle.WEIGHTS).read_bytes())  # "fine-tuned again"
    assert not onnx_export.is_current(model_dir)
    infos = read_members([model_dir])
    assert member_engines(infos, "auto", "cpu", quiet=True) == ["torch"]  # auto never exports unasked
    assert member_engines(infos, "onnx", "cpu", quiet=True) == ["onnx"]  # onnx exports once, then runs it
    assert onnx_export.is_current(model_dir)


# --- engines agree; --lazy stays exact within an engine -------------------------------------------


def test_onnx_and_torch_give_the_same_labels_and_probabilities_within_1e4(trio, images):
    torch_rows, onnx_rows = run(images, trio, engine="torch"), run(images, trio, engine="onnx")
    members = ["a-tinyvgg-32", "b-resnet18-32", "c-resnet18-48"]
    for column in ["prediction", "decided_by", *(f"{member}_prediction" for member in members)]:
        assert onnx_rows[column].equals(torch_rows[column]), column
    numbers = [c for c in torch_rows.columns if c.startswith("p_") or c.endswith("confidence")]
    assert np.abs(onnx_rows[numbers].to_numpy() - torch_rows[numbers].to_numpy()).max() < 1e-4


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_lazy_runs_the_tie_breaker_on_part_of_a_batch_and_stays_exact(trio, images, engine):
    """The lazy runner's partial-batch path, with real, different networks (issue 13, item 14)."""
    infos = read_members(select_models(trio))
    members = load_members(infos, torch.device("cpu"), member_engines(infos, engine, "cpu", quiet=True))
    paths = scan_images(images).images
    full = predict_arrays(paths, members, 2, torch.device("cpu"), batch_size=8, workers=0, quiet=True)
    lazy = predict_arrays(paths, members, 2, torch.device("cpu"), batch_size=8, workers=0, quiet=True, lazy=True)
    tie_ran = lazy.ran[2].reshape(-1, 8)  # the tie-breaker, per batch of 8
    assert (tie_ran.any(axis=1) & ~tie_ran.all(axis=1)).any(), "no batch where the tie-breaker ran on only part"
    assert lazy.ran[:2].all()
    # Where a member ran, its probabilities are exactly the full run's: same engine, same pixels.
    assert np.array_equal(lazy.probs[lazy.ran], full.probs[lazy.ran])
    full_rows, lazy_rows = run(images, trio, engine=engine), run(images, trio, engine=engine, lazy=True)
    assert lazy_rows["prediction"].equals(full_rows["prediction"])


class RandomPixels:
    """Calibration for an int8 graph whose accuracy does not matter here: two batches of random normalised pixels."""

    def __init__(self, size: int):
        generator = np.random.default_rng(0)
        self.batches = iter([{"pixels": generator.normal(size=(4, 3, size, size)).astype(np.float32)}] * 2)

    def get_next(self):
        return next(self.batches, None)


@pytest.fixture(scope="module")
def int8_trio(trio, tmp_path_factory) -> Path:
    """The trio with a current model.int8.onnx each (every node int8)."""
    import shutil

    from quorum.models.quantize import quantize_graph

    root = tmp_path_factory.mktemp("int8") / "models"
    shutil.copytree(trio, root)
    for model_dir in select_models(root):
        graph = model_dir / bundle.INT8_ONNX
        quantize_graph(model_dir / bundle.ONNX, graph, RandomPixels(bundle.read_info(model_dir).image_size))
        onnx_export.tag_weights(graph, onnx_export.weights_digest(model_dir))
    return root


@pytest.mark.parametrize("engine", ["onnx", "int8"])
def test_slices_at_once_give_the_csv_of_one_run_per_batch(int8_trio, images, monkeypatch, engine):
    """A batch in slices on concurrent threads (`OnnxInference`) writes what one run on the whole batch wrote:
    same labels, probabilities and unknown scores within float tolerance, in the same rows."""
    from quorum.models import inference
    from quorum.predict import pipeline

    def rows(threads: int, slice_images: int):
        monkeypatch.setattr(pipeline, "engine_threads", lambda processes=1: threads)
        monkeypatch.setattr(inference, "SLICE_IMAGES", slice_images)
        return predict(images, select_models(int8_trio), PredictOptions(engine=engine, workers=0, batch_size=12,
                                                                         probs=True), quiet=True)

    whole, sliced = rows(threads=1, slice_images=10**6), rows(threads=3, slice_images=5)  # 16 images: 4+4+4, 2+1+1
    numbers = [c for c in whole.columns if c.startswith("p_") or c.endswith(("confidence", "unknown_score"))]
    assert sliced.drop(columns=numbers).equals(whole.drop(columns=numbers))
    assert np.abs(sliced[numbers].to_numpy(float) - whole[numbers].to_numpy(float)).max() < 1e-5
    infos = read_members(select_models(int8_trio))
    assert member_engines(infos, engine, "cpu", quiet=True) == [engine] * 3  # the graphs named ran


# --- the choice of engine ----------------------------------------------------------------------------


def test_auto_is_onnx_on_the_cpu_and_torch_on_a_gpu():
    assert resolve_engine("auto", "cpu") == "onnx"
    assert resolve_engine("auto", "cuda") == resolve_engine("auto", "mps") == "torch"
    assert resolve_engine("torch", "cpu") == "torch"
    with pytest.raises(QuorumError,
                       match="^--engine onnx runs on the CPU, not cuda: use --device cpu, or --engine torch$"):
        check_engine("onnx", "cuda")


def test_resume_refuses_rows_of_another_engine(trio, images, tmp_path):
    out = tmp_path / "preds.csv"
    progress = tmp_path / "preds.csv.partial"
    predict(images, select_models(trio), PredictOptions(engine="torch", workers=0, batch_size=8), quiet=True,
            progress=progress)
    with pytest.raises(QuorumError) as error:
        predict(images, select_models(trio), PredictOptions(engine="onnx", workers=0, batch_size=8), quiet=True,
                progress=progress, resume=True)
    assert "member a-tinyvgg-32 ran on torch then but on onnx now (give the same --engine)" in str(error.value)
    assert not out.exists()


# --- the command line ----------------------------------------------------------------------------------


def cli(*args):
    result = CliRunner().invoke(main, [*map(str, args)])
    assert "Traceback" not in result.output
    return result


@pytest.mark.parametrize(("args", "message"), [
    (["--engine", "onnx", "--device", "cuda"], "Error: --engine onnx runs on the CPU, not cuda: use --device cpu, "
                                               "or --engine torch\n"),
    (["--engine", "tensorrt"], "Error: Invalid value for '--engine': 'tensorrt' is not one of "
                               "'auto', 'onnx', 'int8', 'torch'.\n"),
])
def test_cli_engine_errors_are_one_exact_line(images, tmp_path, args, message):
    result = cli("predict", images, "--out", tmp_path / "p.csv", "--models-dir", tmp_path, *args)
    assert result.exit_code != 0
    assert result.output.endswith(message)
    assert not (tmp_path / "p.csv").exists()


def test_cli_export_writes_model_onnx_and_names_an_unknown_model(tmp_path, make_model):
    make_model(tmp_path, "m", "tinyvgg", 32)
    result = cli("export", "--models-dir", tmp_path)
    assert result.exit_code == 0, result.output
    assert onnx_export.is_current(tmp_path / "m")
    assert "Wrote " in result.output and "checked against torch" in result.output
    assert cli("export", "m", "--models-dir", tmp_path).output == f"{tmp_path / 'm' / 'model.onnx'} is current\n"
    result = cli("export", "nope", "--models-dir", tmp_path)
    assert result.exit_code == 1
    assert result.output == f"Error: unknown model 'nope' in {tmp_path}: choose from m\n"


def test_cli_predict_says_which_engine_runs(trio, images, tmp_path):
    result = cli("predict", images, "--out", tmp_path / "p.csv", "--models-dir", trio, "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "on cpu, engine onnx (ONNX Runtime)" in result.output


# --- finetune writes model.onnx ------------------------------------------------------------------------


@pytest.mark.slow
def test_finetune_writes_a_current_model_onnx(tmp_path):
    from quorum.train.finetune import finetune
    from quorum.train.recipe import Recipe

    data = write_labelled_folder(tmp_path / "data")
    model_dir = finetune(Recipe(backbone="tinyvgg", data=str(data), models_dir=str(tmp_path / "models"), image_size=32,
                                epochs=1, unfreeze_after=1, batch_size=8, workers=0, weights="none"), quiet=True)
    assert onnx_export.is_current(model_dir)


# --- the report's time per image -----------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_report_never_shows_the_smaller_model_slower(tmp_path, make_model, engine):
    """mobilenet_v2 at 32 px (~0.01 GFLOP) against resnet18 at 96 px (~0.33 GFLOP), scored on --data and timed
    on the engine predict runs them on."""
    classes = tuple(COLOUR_CLASSES)[:3]
    data = write_labelled_folder(tmp_path / "data", per_class=2)
    make_model(tmp_path / "models", "small", "mobilenet_v2", 32, classes=classes)
    make_model(tmp_path / "models", "large", "resnet18", 96, classes=classes)
    if engine == "onnx":
        for model_dir in select_models(tmp_path / "models"):
            onnx_export.export_onnx(model_dir)
    began = time.perf_counter()
    report = build_report(tmp_path / "models", data=data, engine=engine, timing=True, quiet=True, workers=0)
    ms = report.table.set_index("model")["ms_per_image"]
    busy = [note for note in report.notes if "busy" in note or "unsteady" in note]
    assert ms["small"] < ms["large"], (ms.to_dict(), busy)
    assert time.perf_counter() - began < 60


@pytest.mark.slow
def test_predict_sees_the_pixels_validation_saw_on_large_jpegs(tmp_path):
    """Issue 13, item 10: a 32-px member and 400x300 JPEGs, where predict used to decode at 1/8 scale and
    validation at full scale. Now both derive the same pixels, so predict repeats val_predictions.csv."""
    import pandas as pd

    from quorum.train.finetune import finetune
    from quorum.train.recipe import Recipe

    for seed, (name, tint) in enumerate(list(COLOUR_CLASSES.items())[:3]):
        write_good_images(tmp_path / "data" / name, 6, size=(400, 300), tint=tint, seed=seed)
    model_dir = finetune(Recipe(backbone="tinyvgg", data=str(tmp_path / "data"), models_dir=str(tmp_path / "models"),
                                image_size=32, epochs=1, unfreeze_after=1, batch_size=8, workers=0, weights="none",
                                val_fraction=0.5), quiet=True)
    validation = pd.read_csv(model_dir / bundle.VAL_PREDICTIONS).set_index("path")
    columns = [c for c in validation.columns if c.startswith("p_")]
    # val_predictions.csv keeps the raw probabilities (to 6 decimals); predict writes them through the model's
    # temperature, which scales the rounding too: hence 2e-5 on torch.
    temperature = json.loads((model_dir / bundle.MODEL_JSON).read_text())["calibration"]["temperature"]
    expected = calibrate(validation[columns].to_numpy(), temperature)
    for engine, tolerance in (("torch", 2e-5), ("onnx", 1e-4)):
        rows = predict(tmp_path / "data", [model_dir], PredictOptions(engine=engine, probs=True, workers=0,
                                                                      flag_unknown=False), quiet=True)
        rows = rows.set_index("path").loc[validation.index]
        assert np.abs(rows[columns].to_numpy() - expected).max() <= tolerance, engine


def test_a_wrong_engine_fails_before_torch_loads(tmp_path):
    script = ("import sys\nfrom quorum.cli import main\n"
              "try:\n    main(['predict', sys.argv[1], '--out', sys.argv[1] + '/p.csv', '--engine', 'onnx', "
              "'--device', 'mps'])\nexcept SystemExit as exit:\n    print(exit.code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.stdout == "1 False\n"
    assert done.stderr == "Error: --engine onnx runs on the CPU, not mps: use --device cpu, or --engine torch\n"
