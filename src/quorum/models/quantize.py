"""`model.int8.onnx`: a bundle's graph with int8 weights and activations, for `--engine int8`.

1. ONNX Runtime's static quantization (`quantize_static`): QDQ format, int8 weights per output channel,
   uint8 activations (the U8S8 kernels that AVX-512 VNNI runs). Its own pre-processing (shape inference, graph
   optimisation) runs first, as its documentation asks.
2. Activation ranges are calibrated on training-share images (models/split.csv) through the model's own
   `Preprocessing` and `Normalizer`: the pixels predict will feed it, never validation's.
3. Accuracy-aware, in the spirit of Intel Neural Compressor's and ONNX Runtime's tuning: every node is quantized
   first; only when that graph's validation accuracy falls more than TOLERANCE below float32's are the stem
   convolution and the classifier head (FLOAT_NODES) left in float32 and the graph quantized again. model.json's
   `int8` records both graphs' accuracies, the one kept and why, so a user sees what int8 costs before choosing
   it; `--engine auto` never picks it.
4. Like model.onnx, the graph records the SHA-256 of the weights it came from: a model fine-tuned again
   is never run with a stale int8 graph.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from quorum import files
from quorum.console import say
from quorum.data.images import UnreadableImage, load_rgb
from quorum.errors import QuorumError
from quorum.models import onnx_export
from quorum.models.bundle import INT8_ONNX, MODEL_JSON, ONNX, VAL_PREDICTIONS, ModelInfo, read_info
from quorum.models.inference import OnnxInference, onnx_session

# The fallback: float32 where int8 costs a MobileNet-class CNN accuracy and saves it little time (the usual mixed
# precision): the stem reads the pixels through 3 channels, the head writes the logits. bench_deploy's int8 study
# (benchmarks/RESULTS.md): on six real Lite members this kept validation and test accuracy within 0.5 points, where
# every node in int8 lost up to 1.7 (one validation image of 60) and 1.3 test points. Not the default because a
# float32 stem costs ResNet50 at 224 px, whose 7x7 stem is big, a quarter of its int8 gain (2.15x float32, not 2.9x).
FLOAT_NODES = ("stem", "head")
# Validation accuracy the all-int8 graph may lose before the fallback is tried: the 0.5 points per member of
# issue 22. On 200 validation images that is one image; with fewer, any image lost is more than the tolerance.
TOLERANCE = 0.005
VARIANTS = {"every node int8": (), "stem conv and head in float32": FLOAT_NODES}  # in the order they are tried
CALIBRATION_IMAGES = 128  # ORT's examples use 100-500; more barely moves the ranges of these small graphs
BATCH = 16


def quantize_models(model_dirs: list[Path], force: bool = False, quiet: bool = False,
                    tolerance: float = TOLERANCE) -> list[Path]:
    """`quorum export --int8`: model.int8.onnx for each bundle lacking a current one (every one with `force`)."""
    written = []
    for model_dir in map(Path, model_dirs):
        if not force and onnx_export.is_current(model_dir, graph=INT8_ONNX):
            say(f"{model_dir / INT8_ONNX} is current", quiet)
            continue
        began = time.perf_counter()
        try:
            scores = quantize(model_dir, tolerance)
        except onnx_export.OnnxUnavailable as exc:
            raise QuorumError(f"cannot quantize {model_dir.name}: {exc}") from None
        say(f"Wrote {model_dir / INT8_ONNX} ({time.perf_counter() - began:.1f} s): validation accuracy "
            f"{scores['val_accuracy_fp32']:.1%} as float32, {scores['val_accuracy_int8']:.1%} as int8 "
            f"({scores['kept']})", quiet)
        written.append(model_dir / INT8_ONNX)
    return written


def quantize(model_dir: Path, tolerance: float = TOLERANCE) -> dict:
    """Write model_dir/model.int8.onnx from its (current) model.onnx: the first of VARIANTS whose validation
    accuracy is within `tolerance` of float32's, else the last; record in model.json what was tried and kept."""
    model_dir = Path(model_dir)
    info = read_info(model_dir)
    if not onnx_export.is_current(model_dir):
        onnx_export.export_onnx(model_dir)
    fp32, tried, paths = validation_accuracy(info, model_dir / ONNX), {}, training_images(info)
    with files.atomic_path(model_dir / INT8_ONNX) as tmp:
        for kept, exclude in VARIANTS.items():
            reader = CalibrationReader(info, paths)
            quantize_graph(model_dir / ONNX, tmp, reader, exclude)
            tried[kept] = validation_accuracy(info, tmp)
            # Rounded: 0.865 - 0.86 is 0.005000000000000004 in floats, and one image of 200 is within 0.5 points.
            if round(fp32 - tried[kept], 9) <= tolerance:
                break
        onnx_export.tag_weights(tmp, onnx_export.weights_digest(model_dir))
    first = next(iter(VARIANTS))
    verdict = "within" if kept == first else "a loss beyond"
    why = (f"{first}: validation accuracy {100 * (tried[first] - fp32):+.2f} points against float32, {verdict} the "
           f"tolerance of {100 * tolerance:g} points")
    scores = {"val_accuracy_fp32": fp32, "val_accuracy_int8": tried[kept], "calibration_images": reader.count,
              "kept": kept, "float32_nodes": list(VARIANTS[kept]), "tolerance": tolerance, "tried": tried,
              "why": why, "format": f"QDQ, per-channel int8 weights, uint8 activations; {kept}"}
    files.write_json(model_dir / MODEL_JSON, dict(info.raw, int8=scores))
    return scores


def quantize_graph(source: Path, target: Path, reader, exclude: tuple[str, ...] = (), **options) -> None:
    """ONNX Runtime's static int8 quantization of the graph at `source`, calibrated on `reader`'s batches.

    `exclude`: nodes left in float32, by name or as "stem" (the convolution that reads the pixels), "head"
    (the Gemm or MatMul that writes the logits) and "depthwise" (every convolution of one channel per group);
    `options`: quantize_static's own keywords, over these defaults.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    settings = dict(quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax) | options
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        nodes = edge_nodes(onnx.load(str(prepared)).graph, exclude) if exclude else None
        quantize_static(str(prepared), str(target), reader, nodes_to_exclude=nodes, **settings)


def edge_nodes(graph, names: tuple[str, ...]) -> list[str]:
    """Node names for `names`: "stem", "head" and "depthwise" (see quantize_graph) are found in `graph`, others
    kept as given."""
    inputs, outputs = {value.name for value in graph.input}, {value.name for value in graph.output}
    groups = {node.name: next((a.i for a in node.attribute if a.name == "group"), 1) for node in graph.node}
    found = {"stem": [node.name for node in graph.node if node.op_type == "Conv" and inputs & set(node.input)],
             "head": [node.name for node in graph.node if node.op_type in ("Gemm", "MatMul")
                      and outputs & set(node.output)],
             "depthwise": [node.name for node in graph.node if node.op_type == "Conv" and groups[node.name] > 1]}
    return [node for name in names for node in found.get(name, [name])]


def training_images(info: ModelInfo, limit: int = CALIBRATION_IMAGES) -> list[Path]:
    """Up to `limit` training-share images of the split the model was validated on, spread over its classes."""
    split = info.raw.get("split") or {}
    split_file = info.path.parent / split.get("file", "split.csv")
    if not split.get("root") or not split_file.is_file():
        raise onnx_export.OnnxUnavailable(f"{split_file} is missing: int8 calibrates on the model's training images "
                                          "(fine-tune it in this models dir)")
    table = files.read_csv(split_file, keep_default_na=False, dtype=str)
    train = table[table.subset == "train"]
    # Round-robin over classes so each class's activations shape the ranges, whatever the class sizes.
    train = train.assign(turn=train.groupby("label").cumcount()).sort_values(["turn", "label"], kind="stable")
    return [Path(split["root"]) / path for path in train.path[:limit]]


class CalibrationReader:
    """ONNX Runtime's CalibrationDataReader: batches of normalised pixels, each image decoded once."""

    def __init__(self, info: ModelInfo, paths: list[Path]):
        self.pixels, self.normalize = info.preprocessing.eval_pixels(), info.preprocessing.normalizer()
        self.batches = iter(self._batches(paths))
        self.count = 0

    def _batches(self, paths: list[Path]):
        for start in range(0, len(paths), BATCH):
            images = []
            for path in paths[start: start + BATCH]:
                try:
                    images.append(self.pixels(load_rgb(path)))
                except UnreadableImage:
                    continue  # split.csv lists unreadable files apart; one that broke since adds nothing
            if images:
                self.count += len(images)
                with torch.inference_mode():
                    yield {"pixels": self.normalize(torch.stack(images)).numpy()}

    def get_next(self):
        return next(self.batches, None)


def validation_accuracy(info: ModelInfo, graph: Path) -> float:
    """A graph's accuracy on the validation images listed in the bundle's val_predictions.csv."""
    table = files.read_csv(info.path / VAL_PREDICTIONS, keep_default_na=False, dtype=str)
    root = Path((info.raw.get("split") or {}).get("root", ""))
    run = OnnxInference(onnx_session(graph, threads=1), info.preprocessing)
    pixels, index = info.preprocessing.eval_pixels(), {name: i for i, name in enumerate(info.classes)}
    right = total = 0
    for start in range(0, len(table), BATCH):
        rows = table.iloc[start: start + BATCH]
        batch = torch.stack([pixels(load_rgb(root / path)) for path in rows.path])
        predicted = run(batch).argmax(axis=1)
        right += int((predicted == np.array([index[label] for label in rows.true_label])).sum())
        total += len(rows)
    return right / max(total, 1)
