"""int8: `quorum export --int8` writes model.int8.onnx from training images, records what it costs, and
`--engine int8` runs it; rows of int8 and float32 runs are never mixed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from image_factory import write_good_images, write_labelled_folder
from quorum.cli import main
from quorum.errors import QuorumError
from quorum.models import bundle, onnx_export
from quorum.models.quantize import quantize
from quorum.predict.members import member_engines, read_members, select_models
from quorum.predict.options import PredictOptions
from quorum.predict.pipeline import predict

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A real fine-tuned bundle (tinyvgg, 1 epoch) in a models dir with its split.csv, and its int8 graph."""
    from quorum.train.finetune import finetune
    from quorum.train.recipe import Recipe

    root = tmp_path_factory.mktemp("int8")
    data = write_labelled_folder(root / "data", per_class=6)
    finetune(Recipe(backbone="tinyvgg", data=str(data), models_dir=str(root / "models"), image_size=32, epochs=1,
                    unfreeze_after=0, batch_size=8, workers=0, weights="none"), quiet=True)
    result = cli("export", "--int8", "--models-dir", root / "models")
    assert result.exit_code == 0, result.output
    return root / "models"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    write_good_images(folder, 12, size=(64, 48))
    return folder


def cli(*args):
    result = CliRunner().invoke(main, [*map(str, args)])
    assert "Traceback" not in result.output
    return result


def test_export_int8_records_both_accuracies_and_the_weights(trained):
    model_dir = select_models(trained)[0]
    scores = json.loads((model_dir / bundle.MODEL_JSON).read_text())["int8"]
    assert 0 <= scores["val_accuracy_int8"] <= 1 and 0 <= scores["val_accuracy_fp32"] <= 1
    assert scores["calibration_images"] > 0
    assert onnx_export.is_current(model_dir, graph=bundle.INT8_ONNX)
    assert "is current" in cli("export", "--int8", "--models-dir", trained).output


def float32_convs(graph_file: Path) -> list[bool]:
    """Per convolution of an int8 graph, in order from the input, whether it reads float32 weights (else int8's
    DequantizeLinear); and asserts the head is int8."""
    import onnx

    graph = onnx.load(str(graph_file)).graph
    made_by = {output: node for node in graph.node for output in node.output}
    float_weights = {init.name for init in graph.initializer if init.data_type == onnx.TensorProto.FLOAT}
    [head] = [node for node in graph.node if node.op_type in ("Gemm", "MatMul")]
    assert made_by[head.input[1]].op_type == "DequantizeLinear"
    convs = [node for node in graph.node if node.op_type == "Conv"]
    assert all((node.input[1] in float_weights) != (made_by.get(node.input[1]) is not None
                                                      and made_by[node.input[1]].op_type == "DequantizeLinear")
               for node in convs)
    return [node.input[1] in float_weights for node in convs]


@pytest.fixture
def copied(trained, tmp_path) -> Path:
    """The trained bundle in a models dir of the test's own, to quantize again."""
    models = shutil.copytree(trained, tmp_path / "models")
    return select_models(models)[0]


def test_the_graph_kept_is_the_one_model_json_names(trained):
    model_dir = select_models(trained)[0]
    scores = json.loads((model_dir / bundle.MODEL_JSON).read_text())["int8"]
    front = scores["float32_convs"]
    assert float32_convs(model_dir / bundle.INT8_ONNX) == [True] * front + [False] * (6 - front)  # tinyvgg: 6 convs
    assert len(scores["float32_nodes"]) == front
    assert scores["tried"][scores["kept"]] == scores["val_accuracy_int8"] and scores["tolerance"] == 0.005


def test_export_int8_refuses_a_model_another_run_is_making(copied):
    """export --int8 reads model.json and writes it back with the int8 block: under the model's lock, as finetune
    and calibrate hold it, or their change would be undone."""
    from quorum import files

    before = {name: (copied / name).read_bytes() for name in (bundle.MODEL_JSON, bundle.INT8_ONNX)}
    with files.exclusive(bundle.lock_path(copied)):
        result = cli("export", "--int8", "--force", "--models-dir", copied.parent)
    assert (result.exit_code, result.output) == (1, f"Error: another quorum run is making or changing {copied} "
                                                    "now: export it when that run has finished\n")
    assert {name: (copied / name).read_bytes() for name in before} == before


def test_an_unreadable_validation_image_is_left_out_by_name_not_an_error_without_a_name(copied, tmp_path):
    data = Path(shutil.copytree(bundle.read_info(copied).labelled_root, tmp_path / "data"))
    info = json.loads((copied / bundle.MODEL_JSON).read_text())
    (copied / bundle.MODEL_JSON).write_text(json.dumps({**info, "split": {**info["split"], "root": str(data)}}))
    first = bundle.read_val_predictions(copied, info["classes"])[0][0]
    (data / first).write_bytes(b"")
    result = cli("export", "--int8", "--force", "--models-dir", copied.parent)
    assert result.exit_code == 0, result.output
    assert (f"Left out 1 validation image(s) of {copied.name} that cannot be read (e.g. {data / first}: empty "
            "file)") in " ".join(result.output.split())
    scores = json.loads((copied / bundle.MODEL_JSON).read_text())["int8"]
    assert scores["validation_images"] == len(bundle.read_val_predictions(copied, info["classes"])[0]) - 1


def test_training_images_that_cannot_be_read_are_one_error_line(copied, tmp_path):
    """int8 calibrates on the training share: with none readable ONNX Runtime crashed ('No data is collected')."""
    data = Path(shutil.copytree(bundle.read_info(copied).labelled_root, tmp_path / "data"))
    info = json.loads((copied / bundle.MODEL_JSON).read_text())
    (copied / bundle.MODEL_JSON).write_text(json.dumps({**info, "split": {**info["split"], "root": str(data)}}))
    split = pd.read_csv(copied.parent / "split.csv")
    for path in split[split.subset == "train"].path:
        (data / path).write_bytes(b"")
    before = (copied / bundle.MODEL_JSON).read_bytes()
    result = cli("export", "--int8", "--force", "--models-dir", copied.parent)
    assert (result.exit_code, result.output) == (1, f"Error: none of the training images {copied.name} calibrates "
                                                    f"int8 on can be read (under {data}): restore them, or fine-tune "
                                                    "the model again\n")
    assert (copied / bundle.MODEL_JSON).read_bytes() == before


def test_every_node_is_int8_when_that_loses_no_more_than_the_tolerance(copied):
    scores = quantize(copied, tolerance=1.0)  # 100 points: nothing can lose more
    assert scores["kept"] == "every node int8" and list(scores["tried"]) == ["every node int8"]
    assert float32_convs(copied / bundle.INT8_ONNX) == [False] * 6
    change = 100 * (scores["val_accuracy_int8"] - scores["val_accuracy_fp32"])
    assert scores["why"] == (f"every node int8: validation accuracy {change:+.2f} points against float32, within "
                             "the tolerance of 100 points")
    assert json.loads((copied / bundle.MODEL_JSON).read_text())["int8"] == scores


def test_the_first_convs_go_back_to_float32_one_more_at_a_time_while_int8_loses_more(copied):
    # A tolerance of -1 point: even a graph as accurate as float32 has lost "more" than that, so every graph up to
    # MAX_FLOAT_CONVS (5) is tried and the last kept.
    scores = quantize(copied, tolerance=-0.01)
    assert list(scores["tried"]) == ["every node int8", "the first conv in float32", *(
        f"the first {front} convs in float32" for front in range(2, 6))]
    assert scores["kept"] == "the first 5 convs in float32" and scores["float32_convs"] == 5
    assert float32_convs(copied / bundle.INT8_ONNX) == [True] * 5 + [False]
    assert scores["why"].startswith("every node int8: validation accuracy ")
    assert "; the first 5 convs in float32: validation accuracy " in scores["why"]
    assert scores["why"].endswith(" points against float32, a loss beyond the tolerance of -1 points")
    assert onnx_export.is_current(copied, graph=bundle.INT8_ONNX)


def test_int8_graph_holds_int8_weights_and_runs_with_onnxruntime_numpy_and_pillow_only(trained, images):
    import onnx

    model_dir = select_models(trained)[0]
    graph = onnx.load(str(model_dir / bundle.INT8_ONNX))
    assert any(node.op_type == "DequantizeLinear" for node in graph.graph.node)
    assert any(init.data_type == onnx.TensorProto.INT8 for init in graph.graph.initializer)
    # What a device that ships the graph has: model.json and these three packages (no torch, no onnx, no quorum).
    script = textwrap.dedent("""
        import sys
        before = set(sys.modules)
        import json
        from pathlib import Path
        import numpy as np, onnxruntime
        from PIL import Image
        model_dir, image = Path(sys.argv[1]), sys.argv[2]
        info = json.loads((model_dir / "model.json").read_text())
        size = info["image_size"]
        pixels = np.asarray(Image.open(image).convert("RGB").resize((size, size)), np.float32) / 255
        x = ((pixels - info["mean"]) / info["std"]).transpose(2, 0, 1)[None].astype(np.float32)
        session = onnxruntime.InferenceSession(str(model_dir / "model.int8.onnx"), providers=["CPUExecutionProvider"])
        logits = session.run(None, {session.get_inputs()[0].name: x})[0]
        print(logits.shape)
        print(sorted({name.split(".")[0] for name in set(sys.modules) - before} - set(sys.stdlib_module_names)))
    """)
    image = sorted(images.iterdir())[0]
    done = subprocess.run([sys.executable, "-c", script, str(model_dir), str(image)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"(1, {len(bundle.read_info(model_dir).classes)})",
                                        "['PIL', 'numpy', 'onnxruntime']"]


def test_engine_int8_runs_the_int8_graph_and_auto_never_picks_it(trained, images):
    infos = read_members(select_models(trained))
    assert member_engines(infos, "int8", "cpu", quiet=True) == ["int8"]
    assert member_engines(infos, "auto", "cpu", quiet=True) == ["onnx"]
    frame = predict(images, select_models(trained), PredictOptions(engine="int8", workers=0), quiet=True)
    assert (frame["status"] == "ok").all() and len(frame) == 12


def test_resume_and_merge_refuse_to_mix_int8_and_float32_rows(trained, images, tmp_path):
    progress = tmp_path / "p.csv.partial"
    predict(images, select_models(trained), PredictOptions(engine="int8", workers=0), quiet=True, progress=progress)
    with pytest.raises(QuorumError, match="ran on int8 then but on onnx now"):
        predict(images, select_models(trained), PredictOptions(engine="onnx", workers=0), quiet=True,
                progress=progress, resume=True)
    parts = []
    for index, engine in enumerate(["int8", "onnx"]):
        parts.append(tmp_path / f"part{index}.csv")
        result = cli("predict", images, "--out", parts[-1], "--models-dir", trained, "--engine", engine,
                     "--shard", f"{index}/2", "--workers", "0", "-q")
        assert result.exit_code == 0, result.output
    result = cli("merge", *parts, "--out", tmp_path / "all.csv")
    assert result.exit_code == 1 and "int8" in result.output and "onnx" in result.output
    assert not (tmp_path / "all.csv").exists()


def test_engine_int8_on_a_gpu_is_one_error_line(images, tmp_path):
    result = cli("predict", images, "--out", tmp_path / "p.csv", "--models-dir", tmp_path, "--engine", "int8",
                 "--device", "cuda")
    assert result.exit_code != 0
    assert result.output.endswith("Error: --engine int8 runs on the CPU, not cuda: "
                                  "use --device cpu, or --engine torch\n")


def test_a_model_without_int8_graph_runs_float32_and_says_so(tmp_path, make_model, capsys):
    make_model(tmp_path, "m", "tinyvgg", 32)
    onnx_export.export_onnx(tmp_path / "m")
    assert member_engines(read_members([tmp_path / "m"]), "int8", "cpu") == ["onnx"]
    captured = capsys.readouterr()
    assert "No current model.int8.onnx for m: float32 there" in captured.out + captured.err


def test_resume_after_export_int8_on_a_float32_engine_gives_the_uninterrupted_csv(copied, images, tmp_path):
    """`export --int8` adds model.json's int8 block, which no float32 row reads: a run resumed after it is one run."""
    (copied / bundle.INT8_ONNX).unlink()  # the bundle as finetune left it
    raw = json.loads((copied / bundle.MODEL_JSON).read_text())
    (copied / bundle.MODEL_JSON).write_text(json.dumps({key: value for key, value in raw.items() if key != "int8"}))
    whole, out, progress = tmp_path / "whole.csv", tmp_path / "p.csv", tmp_path / "p.csv.partial"
    args = ["--models-dir", copied.parent, "--engine", "onnx", "--probs", "--workers", "0", "-q"]
    assert cli("predict", images, "--out", whole, *args).exit_code == 0
    predict(images, select_models(copied.parent), PredictOptions(engine="onnx", probs=True, workers=0), quiet=True,
            progress=progress)
    rows = progress / "rows-0.jsonl"
    rows.write_text("".join(rows.read_text().splitlines(keepends=True)[:5]))  # killed after five rows
    assert cli("export", "--int8", "--models-dir", copied.parent).exit_code == 0
    assert "int8" in json.loads((copied / bundle.MODEL_JSON).read_text())
    result = cli("predict", images, "--out", out, *args, "--resume")
    assert result.exit_code == 0, result.output
    # labels exactly; numbers within 1e-4: ONNX Runtime sums a batch of 7 and one of 12 in other orders
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(whole), check_exact=False, atol=1e-4)


def test_rows_of_an_int8_graph_exported_again_are_refused_by_name(copied, images, tmp_path):
    """Under --engine int8 the graph itself makes the rows: another one from the same weights (another variant,
    other calibration images) must not be mixed in, though model.json and the weights are unchanged."""
    from quorum.models.quantize import CalibrationReader, quantize_graph, training_images

    progress, parts = tmp_path / "p.csv.partial", [tmp_path / "part0.csv", tmp_path / "part1.csv"]
    predict(images, select_models(copied.parent), PredictOptions(engine="int8", workers=0), quiet=True,
            progress=progress)
    args = ["--models-dir", copied.parent, "--engine", "int8", "--workers", "0", "-q"]
    assert cli("predict", images, "--out", parts[0], *args, "--shard", "0/2").exit_code == 0
    info = bundle.read_info(copied)
    graph = copied / bundle.INT8_ONNX
    before = graph.read_bytes()
    quantize_graph(copied / bundle.ONNX, graph, CalibrationReader(info, training_images(info)[:8]),
                   front=info.raw["int8"]["float32_convs"] + 1)
    onnx_export.tag_weights(graph, onnx_export.weights_digest(copied))
    assert graph.read_bytes() != before and onnx_export.is_current(copied, graph=bundle.INT8_ONNX)
    changed = (f"member {copied.name} has a different model.json, weights or int8 graph {{}} "
               "(fine-tuned, calibrated or exported with --int8 again?)")
    with pytest.raises(QuorumError, match=re.escape(changed.format("then and now"))):
        predict(images, select_models(copied.parent), PredictOptions(engine="int8", workers=0), quiet=True,
                progress=progress, resume=True)
    assert cli("predict", images, "--out", parts[1], *args, "--shard", "1/2").exit_code == 0
    result = cli("merge", *parts, "--out", tmp_path / "all.csv")
    assert result.output == (f"Error: {parts[1]} and {parts[0]} come from different runs: "
                             f"{changed.format(f'in {parts[0]} and in {parts[1]}')}\n")
    assert not (tmp_path / "all.csv").exists()
