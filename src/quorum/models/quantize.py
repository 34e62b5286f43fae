"""`model.int8.onnx`: a bundle's graph with int8 weights and activations, for `--engine int8`.

1. ONNX Runtime's static quantization (`quantize_static`): QDQ format, int8 weights per output channel,
   uint8 activations (the U8S8 kernels that AVX-512 VNNI runs). Its own pre-processing (shape inference, graph
   optimisation) runs first, as its documentation asks.
2. Activation ranges are calibrated on training-share images (models/split.csv) through the model's own
   `Preprocessing` and `Normalizer`: the pixels predict will feed it, never validation's.
3. Accuracy-aware, in the spirit of Intel Neural Compressor's and ONNX Runtime's tuning: every node is quantized
   first; while the graph's validation accuracy falls more than TOLERANCE below float32's, one more convolution from
   the input is left in float32 (the first, then the first two, ... up to MAX_FLOAT_CONVS) and the graph quantized
   again from the same calibrated ranges. model.json's `int8` records every graph's accuracy, the one kept and why,
   so a user sees what int8 costs before choosing it; `--engine auto` never picks it.
4. Like model.onnx, the graph records the SHA-256 of the weights it came from: a model fine-tuned again
   is never run with a stale int8 graph.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.markup import escape

from quorum import files
from quorum.console import say
from quorum.data.images import UnreadableImage, load_rgb
from quorum.data.split import read_split_table
from quorum.errors import QuorumError
from quorum.models import onnx_export
from quorum.models.bundle import INT8_ONNX, MODEL_JSON, ONNX, VAL_PREDICTIONS, ModelInfo, lock_path, read_info
from quorum.models.inference import LOGITS_OUTPUT, onnx_session

# The fallback: the convolutions nearest the pixels in float32, one float island at the input. Measured on six Lite
# members (benchmarks/RESULTS.md, "int8 accuracy: a float32 front"): an error made there runs through every later
# layer; the first 2-5 convs in float32 bring the int8 graph's divergence from float32 (KL on test images) down
# 2.4-8.5 times, where a node further in, left alone in float32, takes off a quarter at most, and the nodes ONNX
# Runtime's qdq_loss_debug ranks worst (up to 16) nothing. They are small: Lite graphs stay 1.7-2.8x float32's speed.
MAX_FLOAT_CONVS = 5  # on EfficientNet-Lite at 96 px: the stem and the convs that read its 48x48 maps
# Validation accuracy an int8 graph may lose: the 0.5 points per member of issue 22. On 200 validation images that is
# one image; with fewer, any image lost is more than the tolerance.
TOLERANCE = 0.005
CALIBRATION_IMAGES = 128  # ORT's examples use 100-500; more barely moves the ranges of these small graphs
BATCH = 16


def quantize_models(model_dirs: list[Path], force: bool = False, quiet: bool = False,
                    tolerance: float = TOLERANCE) -> list[Path]:
    """`quorum export --int8`: model.int8.onnx for each bundle lacking a current one (every one with `force`)."""
    written = []
    for model_dir in map(Path, model_dirs):
        # model.json is read, then written with the int8 block: held as finetune and calibrate hold it, so neither
        # (nor a second export) can change the bundle in between and have its change undone.
        busy = f"another quorum run is making or changing {model_dir} now: export it when that run has finished"
        with files.exclusive(lock_path(model_dir), busy):
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
    """Write model_dir/model.int8.onnx from its (current) model.onnx: every node int8, else the fewest first convs
    in float32 (up to MAX_FLOAT_CONVS) whose validation accuracy is within `tolerance` of float32's, else the most;
    record in model.json what was tried and kept."""
    model_dir = Path(model_dir)
    info = read_info(model_dir)
    if not onnx_export.is_current(model_dir):
        onnx_export.export_onnx(model_dir)
    validation, reader, tried = Labelled.validation(info), CalibrationReader(info, training_images(info)), {}
    if reader.count == 0:  # ONNX Runtime would stop with "No data is collected."
        raise QuorumError(f"none of the training images {model_dir.name} calibrates int8 on can be read (under "
                          f"{info.labelled_root}): restore them, or fine-tune the model again")
    if validation.left_out:
        said = (f"Left out {len(validation.left_out)} validation image(s) of {model_dir.name} that cannot be read "
                f"(e.g. {validation.left_out[0]}): both graphs are scored on the other {len(validation.y)}")
        say(f"[yellow]{escape(said)}[/yellow]")
    fp32 = float(validation.right(model_dir / ONNX).mean())
    with files.atomic_path(model_dir / INT8_ONNX) as tmp, tempfile.TemporaryDirectory() as scratch:
        ranges = Path(scratch) / "ranges.json"  # calibrated once: the graphs differ only in the nodes left in float32
        for front in range(MAX_FLOAT_CONVS + 1):
            float_nodes = quantize_graph(model_dir / ONNX, tmp, reader, front=front, calibration_cache_path=ranges)
            if len(float_nodes) < front:
                break  # a graph of fewer convs: the one before left them all in float32 (and is this one again)
            kept = variant(front)
            tried[kept] = float(validation.right(tmp).mean())
            if within(fp32, tried[kept], tolerance):
                break
        onnx_export.tag_weights(tmp, onnx_export.weights_digest(model_dir))
    scores = {"val_accuracy_fp32": fp32, "val_accuracy_int8": tried[kept], "validation_images": len(validation.y),
              "calibration_images": reader.count,
              "kept": kept, "float32_convs": len(float_nodes), "float32_nodes": float_nodes, "tolerance": tolerance,
              "tried": tried, "why": why(tried, kept, fp32, tolerance),
              "format": f"QDQ, per-channel int8 weights, uint8 activations; {kept}"}
    files.write_json(model_dir / MODEL_JSON, dict(info.raw, int8=scores))
    return scores


def within(fp32: float, int8: float, tolerance: float) -> bool:
    # Rounded: 0.865 - 0.86 is 0.005000000000000004 in floats, and one image of 200 is within 0.5 points.
    return round(fp32 - int8, 9) <= tolerance


def why(tried: dict[str, float], kept: str, fp32: float, tolerance: float) -> str:
    """model.json's reason for the graph kept: the all-int8 graph's loss against the tolerance, then the one kept."""
    said = []
    for name in dict.fromkeys([variant(0), kept]):
        verdict = "within" if within(fp32, tried[name], tolerance) else "a loss beyond"
        said.append(f"{name}: validation accuracy {100 * (tried[name] - fp32):+.2f} points against float32, {verdict} "
                    f"the tolerance of {100 * tolerance:g} points")
    return "; ".join(said)


def variant(front: int) -> str:
    """How model.json names the graph with the first `front` convolutions in float32."""
    return {0: "every node int8", 1: "the first conv in float32"}.get(front, f"the first {front} convs in float32")


def quantize_graph(source: Path, target: Path, reader, exclude: tuple[str, ...] = (), front: int = 0,
                   **options) -> list[str]:
    """ONNX Runtime's static int8 quantization of the graph at `source`, calibrated on `reader`'s batches; returns
    the names of the nodes left in float32.

    `exclude`: nodes left in float32, by name or as "stem" (the convolution that reads the pixels), "head"
    (the Gemm or MatMul that writes the logits) and "depthwise" (every convolution of one channel per group);
    `front`: the first convolutions from the input left in float32 too; `options`: quantize_static's own
    keywords, over these defaults.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    settings = dict(quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax) | options
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared)).graph
        convs = [node.name for node in graph.node if node.op_type == "Conv"]  # ONNX keeps nodes in topological order
        nodes = list(dict.fromkeys(convs[:front] + edge_nodes(graph, exclude)))
        quantize_static(str(prepared), str(target), reader, nodes_to_exclude=nodes, **settings)
    return nodes


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
    table = read_split_table(split_file)
    train = table[table.subset == "train"]
    # Round-robin over classes so each class's activations shape the ranges, whatever the class sizes.
    train = train.assign(turn=train.groupby("label").cumcount()).sort_values(["turn", "label"], kind="stable")
    return [Path(split["root"]) / path for path in train.path[:limit]]


class CalibrationReader:
    """ONNX Runtime's CalibrationDataReader: batches of normalised pixels, each image decoded once."""

    def __init__(self, info: ModelInfo, paths: list[Path]):
        self.pixels, self.normalize = info.preprocessing.eval_pixels(), info.preprocessing.normalizer()
        self.count = 0
        # Decoded now (CALIBRATION_IMAGES at most), so that `count` says before quantizing whether any image was read.
        self.batches = iter(list(self._batches(paths)))

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


class Labelled:
    """Images of one model's preprocessing, decoded once, and their class indices: which ones a graph gets right."""

    def __init__(self, info: ModelInfo, paths: list[Path], labels: list[str]):
        pixels, self.normalize = info.preprocessing.eval_pixels(), info.preprocessing.normalizer()
        read, self.left_out = [], []  # left_out: "path: why" of each image that cannot be read (any more)
        for path, label in zip(paths, labels):
            try:
                read.append((pixels(load_rgb(path)), info.classes.index(label)))
            except UnreadableImage as exc:
                self.left_out.append(f"{path}: {exc.reason}")
        if not read:
            raise QuorumError(f"none of the {len(paths)} images {info.path.name} is scored on can be read "
                              f"(e.g. {self.left_out[0] if self.left_out else 'none listed'}): restore them, or "
                              "fine-tune the model again")
        self.x = torch.stack([x for x, _ in read])
        self.y = np.array([y for _, y in read])

    @classmethod
    def validation(cls, info: ModelInfo) -> Labelled:
        """The validation images listed in the bundle's val_predictions.csv."""
        table = files.read_csv(info.path / VAL_PREDICTIONS, keep_default_na=False, dtype=str)
        root = Path((info.raw.get("split") or {}).get("root", ""))
        return cls(info, [root / path for path in table.path], list(table.true_label))

    def right(self, graph: Path) -> np.ndarray:
        """Per image, whether the graph's label is the true one."""
        session = onnx_session(graph, threads=1)
        with torch.inference_mode():
            logits = [session.run([LOGITS_OUTPUT], {"pixels": self.normalize(self.x[start: start + BATCH]).numpy()})[0]
                      for start in range(0, len(self.x), BATCH)]
        return np.concatenate(logits).argmax(axis=1) == self.y
