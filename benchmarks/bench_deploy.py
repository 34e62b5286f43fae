"""One model to ship (issue 22): students distilled from the ensemble, and int8 graphs, against the members.

    python benchmarks/bench_deploy.py [--steps train predict students int8 int8-study speed] [--draw N] [--jobs N]
                                      [--out FILE] [--no-write]

1. Data: the recipe benchmark's Fashion-MNIST slice (100 labelled images per class, which quorum splits 80/20),
   3,000 unlabelled images (300 per class, disjoint) and 2,000 test images (benchmarks/fashion_mnist.py).
2. Teachers: the Lite trio (EfficientNet-Lite0/1/2 at 96 px, 4 frozen + 4 unfrozen epochs, offline ImageNet
   weights), each trained by `quorum finetune` in its own process on one thread, as a user would. Beside them
   (not a teacher), ResNet50 at 64 px (`quorum finetune resnet50 --weights none`: no ImageNet weights offline;
   16 epochs at --finetune-lr 1e-3, where the default 1e-4 reached 60% validation accuracy; same split): a
   ResNet50 whose int8 accuracy can be measured (its speed is measured at 224, in 6).
3. `quorum predict UNLABELLED --probs`, then students of two sizes, `quorum finetune timm/tf_efficientnet_lite0`
   and `..._lite2 --distill` on that CSV (same split; 4 frozen + 12 unfrozen epochs: with the teachers' 4+4 the
   students were still learning at the last epoch and read 0.6-1.0 points below the best teacher, RESULTS.md).
4. `quorum export --int8` (forced: graphs of an earlier rule are replaced) for every model; accuracy (validation
   and test), the int8 variant kept, agreement with the teachers' vote, ms per image (graph alone, random pixels,
   batch 32) and MB, float32 and int8.
5. `--steps int8-study`: what the field tries when int8 post-training quantization costs a MobileNet-class CNN
   accuracy, each of ONNX Runtime's options on the teachers (float32 nodes at the edges, symmetric or signed
   activations, moving-average calibration, per-tensor weights, reduce_range, QOperator, float bias): validation
   and test accuracy of each graph, and its speed against float32; on ResNet50-64 too where it was trained.
6. Speed: the reference trio (mobilenet_v2 at 64 and 224 px, resnet50 at 224; random weights, heads trained as
   benchmarks/members.py does: speed does not depend on the weights; every node int8, quorum's first try, as
   calibrated on random pixels no accuracy can choose) float32 against int8 graphs, and
   `quorum predict --engine onnx` / `--engine int8` against the naive way on the predict benchmark's photos.
Everything made is kept under benchmarks/data/deploy/ and reused. `--draw N` (N > 0) runs the same benchmark, nothing
changed, on another draw of the slice's images (fashion_mnist.py's `draw`), kept under benchmarks/data/deploy-drawN/;
ResNet50-64 is trained on draw 0 only (it is there for int8 accuracy, not for the students). `--jobs 2` trains two
teachers or the two students at once, each in its own one-thread process.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from bench_predict import naive_predict, round_folders
from common import DATA, WEIGHTS, finetune_lite, interleaved_speeds, marked, output_args, publish, quorum, step, table
from fashion_mnist import make_slice
from make_photos import make_labelled_set, make_predict_set
from members import build, trios
from quorum.data.images import scan_images
from quorum.models import onnx_export
from quorum.models.bundle import INT8_ONNX, ONNX, read_info
from quorum.models.inference import engine_threads, onnx_session
from quorum.models.quantize import CalibrationReader, Labelled, quantize_graph, quantize_models, training_images
from quorum.predict.options import PredictOptions
from quorum.predict.pipeline import predict

TEACHERS = ("lite0", "lite1", "lite2")
STUDENTS = ("student-lite0", "student-lite2")
STUDENT_EPOCHS = 16  # 4 frozen + 12 unfrozen (the teachers: 4 + 4)
RESNET = "resnet50-64"  # trained from random weights at 64 px: the ResNet50 whose int8 accuracy is measured
STEPS = ("train", "predict", "students", "int8", "int8-study", "speed")


def runs_dir(draw: int) -> Path:
    """Where a draw's models and predictions are kept: draw 0 where every earlier run kept them."""
    return DATA / ("deploy" if draw == 0 else f"deploy-draw{draw}")


def train_all(trainings: list, jobs: int) -> None:
    """Run the trainings (callables starting a quorum process each), `jobs` at a time; the first failure raises."""
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for done in [pool.submit(training) for training in trainings]:
            done.result()


def scores(test: Path, model_dirs: list[Path], teacher_dirs: list[Path]) -> list[list[str]]:
    """Per model, float32 and int8: val and test accuracy, agreement with the teachers' float32 vote."""
    frames = {engine: predict(test, model_dirs, PredictOptions(engine=engine, device="cpu", workers=2), quiet=True)
              for engine in ("onnx", "int8")}
    truth = frames["onnx"]["path"].str.split("/").str[0].to_numpy()
    teachers = predict(test, teacher_dirs, PredictOptions(engine="onnx", device="cpu", workers=2), quiet=True)
    vote = teachers["prediction"].to_numpy()
    rows = [["vote of the 3 teachers (fp32)", "", f"{(vote == truth).mean():.2%}", "100%"]]
    for model_dir in model_dirs:
        info = read_info(model_dir)
        for engine, label in (("onnx", "fp32"), ("int8", "int8")):
            predicted = frames[engine][f"{model_dir.name}_prediction"].to_numpy()
            val = info.raw["int8"][f"val_accuracy_{label}"]
            kept = f" ({info.raw['int8']['kept']})" * (label == "int8")
            rows.append([f"{model_dir.name} {label}{kept}", f"{val:.1%}", f"{(predicted == truth).mean():.2%}",
                         f"{(predicted == vote).mean():.1%}"])
    return rows


class RandomBatches:
    """Calibration for graphs whose speed alone is measured: a few batches of random normalised pixels."""

    def __init__(self, size: int, batches: int = 4):
        generator = np.random.default_rng(0)
        self.batches = iter([{"pixels": generator.normal(size=(8, 3, size, size)).astype(np.float32)}
                             for _ in range(batches)])

    def get_next(self):
        return next(self.batches, None)


def quantize_for_speed(model_dir: Path) -> None:
    """model.int8.onnx, every node int8, for a model whose training images don't matter (random weights, speed
    only); made again every run, so a graph of an earlier rule is never timed."""
    if not onnx_export.is_current(model_dir):
        onnx_export.export_onnx(model_dir)
    quantize_graph(model_dir / ONNX, model_dir / INT8_ONNX, RandomBatches(read_info(model_dir).image_size))
    onnx_export.tag_weights(model_dir / INT8_ONNX, onnx_export.weights_digest(model_dir))


def graph_speeds(model_dir: Path, graphs: tuple[Path, Path] | None = None, repeats: int = 5,
                 batch: int = 32) -> tuple[float, float]:
    """images/s of two graphs (model.onnx and model.int8.onnx by default) on random pixels, interleaved, median
    of `repeats`."""
    size = read_info(model_dir).image_size
    x = np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)
    graphs = graphs or (model_dir / ONNX, model_dir / INT8_ONNX)
    sessions = {"fp32": onnx_session(graphs[0], engine_threads()), "int8": onnx_session(graphs[1], engine_threads())}
    runs = {name: (lambda s=session: s.run(None, {"pixels": x})) for name, session in sessions.items()}
    speeds = interleaved_speeds(runs, batch, repeats)
    return statistics.median(speeds["fp32"]), statistics.median(speeds["int8"])


def int8_variants() -> dict[str, dict]:
    """quantize_graph's settings for each thing tried (`quorum export --int8` tries every node int8, then the first
    1, 2, ... 5 convs in float32)."""
    from onnxruntime.quantization import QuantFormat, QuantType

    return {
        "every node int8 (quorum's first try): QDQ, per-channel, U8S8, MinMax": {},
        "stem conv and head in float32 (quorum's fallback before the float32 front)": {"exclude": ("stem", "head")},
        "the first 5 convs in float32 (the most quorum's fallback leaves in float32)": {"front": 5},
        "head in float32": {"exclude": ("head",)},
        "depthwise convs in float32": {"exclude": ("depthwise",)},
        "S8S8, symmetric activations": {"activation_type": QuantType.QInt8,
                                        "extra_options": {"ActivationSymmetric": True}},
        "MinMax moving average": {"extra_options": {"CalibMovingAverage": True}},
        "bias in float32": {"extra_options": {"QuantizeBias": False}},
        "per-tensor weights": {"per_channel": False},
        "reduce_range (7-bit weights)": {"reduce_range": True},
        "QOperator format": {"quant_format": QuantFormat.QOperator},
    }


def int8_study(model_dirs: list[Path], test: Path, only: list[str] | None = None) -> list[list[str]]:
    """Every variant on every model: validation and test accuracy against float32 (points), the validation images
    it turned wrong and right (what the accuracy change is the difference of: its noise), speed-up."""
    rows, variants = [], int8_variants()
    test_paths = scan_images(test).images
    for model_dir in model_dirs:
        info = read_info(model_dir)
        sets = {"val": Labelled.validation(info),
                "test": Labelled(info, test_paths, [path.parent.name for path in test_paths])}
        fp32 = {name: labelled.right(model_dir / ONNX) for name, labelled in sets.items()}
        for variant, settings in variants.items():
            if only and variant not in only:
                continue
            with tempfile.TemporaryDirectory() as scratch:
                graph = Path(scratch) / "int8.onnx"
                reader = CalibrationReader(info, training_images(info))
                quantize_graph(model_dir / ONNX, graph, reader, **settings)
                right = {name: labelled.right(graph) for name, labelled in sets.items()}
                fast32, fast8 = graph_speeds(model_dir, (model_dir / ONNX, graph))
            before, after = {name: fp32[name].mean() for name in sets}, {name: right[name].mean() for name in sets}
            flips = f"{(fp32['val'] & ~right['val']).sum()} / {(~fp32['val'] & right['val']).sum()}"
            step(f"{model_dir.name} {variant}: val {after['val'] - before['val']:+.2%} test "
                 f"{after['test'] - before['test']:+.2%} speed {fast8 / fast32:.2f}x")
            rows.append([model_dir.name, variant, *(f"{before[name]:.2%} -> {after[name]:.2%} "
                                                    f"({100 * (after[name] - before[name]):+.2f})" for name in sets),
                         flips, f"{fast8 / fast32:.2f}x"])
    return rows


def speed_rows(model_dirs: list[Path]) -> list[list[str]]:
    rows = []
    for model_dir in model_dirs:
        fp32, int8 = graph_speeds(model_dir)
        size_mb = [(model_dir / graph).stat().st_size / 1e6 for graph in (ONNX, INT8_ONNX)]
        rows.append([model_dir.name, f"{1000 / fp32:.2f}", f"{1000 / int8:.2f}", f"{int8 / fp32:.2f}x",
                     f"{size_mb[0]:.1f}", f"{size_mb[1]:.1f}"])
    return rows


def predict_speeds(folder: Path, model_dirs: list[Path], tie_breaker: str, rounds: int) -> dict[str, float]:
    """images/s for the naive way, `--engine onnx` and `--engine int8` on the same photos, in turns."""
    paths = scan_images(folder).images
    for path in paths:
        path.read_bytes()  # every way then reads from the page cache
    parts = round_folders(folder, paths, rounds)
    tie = [path.name for path in model_dirs].index(tie_breaker)
    ways = ["naive", "onnx", "int8"]
    for engine in ways[1:]:  # warm-up: sessions, kernels
        predict(parts[0], model_dirs, PredictOptions(tie_breaker=tie_breaker, device="cpu", engine=engine, workers=2),
                quiet=True)
    seconds = dict.fromkeys(ways, 0.0)
    for number, part in enumerate(parts):
        for way in ways[number % 3:] + ways[:number % 3]:
            began = time.perf_counter()
            if way == "naive":
                naive_predict(scan_images(part).images, model_dirs, tie, 32, 2)
            else:
                predict(part, model_dirs, PredictOptions(tie_breaker=tie_breaker, device="cpu", engine=way,
                                                         workers=2), quiet=True)
            seconds[way] += time.perf_counter() - began
    return {way: len(paths) / s for way, s in seconds.items()}


def main(args: argparse.Namespace) -> int:
    began, load = time.perf_counter(), os.getloadavg()[0]
    data = make_slice(100, 200, 300, draw=args.draw)
    runs = runs_dir(args.draw)
    models_dir, preds = runs / "models", runs / "unlabelled.csv"
    lines = []
    if "train" in args.steps:
        step("teachers")
        train_all([partial(finetune_lite, models_dir, name, lite, data.train, args.weights_dir)
                   for lite, name in enumerate(TEACHERS)], args.jobs)
        if args.draw == 0 and not (models_dir / RESNET / "model.json").is_file():
            quorum("finetune", "resnet50", "--data", data.train, "--image-size", 64, "--epochs", 16,
                   "--finetune-lr", 1e-3, "--weights", "none", "--models-dir", models_dir, "--name", RESNET,
                   "--workers", 0, "--device", "cpu", "--quiet")
    if "predict" in args.steps and not preds.is_file():
        step("predict --probs on the unlabelled images")
        quorum("predict", str(data.unlabelled), "--out", str(preds), "--models-dir", str(models_dir), "--probs", "-q",
               *[part for name in TEACHERS for part in ("--model", name)])
    if "students" in args.steps:
        step("students")
        train_all([partial(finetune_lite, models_dir, name, int(name[-1]), data.train, args.weights_dir, "--distill",
                           preds, epochs=STUDENT_EPOCHS) for name in STUDENTS], args.jobs)
    models = [models_dir / name for name in (*TEACHERS, *STUDENTS, RESNET)
              if (models_dir / name / "model.json").is_file()]
    if "int8" in args.steps:
        step("int8 graphs and scores")
        quantize_models(models, force=True, quiet=True)
        lines += [f"Accuracy on the validation split ({read_info(models[0]).raw['split']['val_images']} images) and on "
                  f"{len(scan_images(data.test).images)} test images; agreement = share of test images where the "
                  "model's label is the teachers' vote's:", ""]
        teachers = [models_dir / name for name in TEACHERS]
        lines += table(["model", "val", "test", "agrees with the vote"], scores(data.test, models, teachers))
    if "int8-study" in args.steps:
        step("int8 variants")
        rows = int8_study([model for model in models if model.name in (*TEACHERS, RESNET)], data.test, args.variants)
        lines += ["int8 variants tried on the teachers and ResNet50-64: accuracy float32 -> int8 (change in points) on "
                  f"the validation split and the {len(scan_images(data.test).images)} test images, 128 training-share "
                  "calibration images; speed-up of the int8 graph over float32 (ONNX Runtime, batch 32, median of 5 "
                  "one-second runs):", ""]
        lines += table(["model", "int8 variant", "val", "test", "val images lost / gained", "speed-up"], rows)
    if "speed" in args.steps:
        step("graph speeds")
        labelled = make_labelled_set()
        reference = next(t for t in trios(DATA / "models", labelled, args.weights_dir,
                                          {"reference": (64, 224, 224), "pretrained": (64, 224, 260)}, 20, 2)
                         if t.name == "reference")
        reference_dirs = build(reference)
        for model_dir in reference_dirs:
            quantize_for_speed(model_dir)
        lines += [f"Graph speed under ONNX Runtime ({engine_threads()} threads, no spinning): ms per image on random "
                  "pixels, batch 32, float32 and int8 interleaved, median of 5 one-second runs:", ""]
        lines += table(["model", "fp32 ms/image", "int8 ms/image", "int8 speed-up", "fp32 MB", "int8 MB"],
                        speed_rows([*models, *reference_dirs]))
        step("predict against the naive way")
        folder = make_predict_set(args.images)
        speeds = predict_speeds(folder, reference_dirs, reference.tie_breaker, args.rounds)
        lines += [f"`quorum predict` with the reference trio on {args.images} photos (500x375 JPEG) against the naive "
                  "way (each member decodes the folder alone, torch), in turns:", ""]
        lines += table(["way", "images/s", "vs naive"],
                        [[way, f"{s:.1f}", f"{s / speeds['naive']:.2f}x"] for way, s in speeds.items()])
    command = " ".join(["python benchmarks/bench_deploy.py", *sys.argv[1:]])
    header = ["## One model to ship: students and int8 (issue 22)", "",
              f"`{command}`: {(time.perf_counter() - began) / 60:.0f} min on {os.cpu_count()} cores, load average "
              f"{load:.1f} at the start and {os.getloadavg()[0]:.1f} at the end, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", ""]
    publish(marked("bench_deploy", header + lines), args.out, write=not args.no_write)
    return 0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--images", type=int, default=1000, help="photos in the predict set (default 1000)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", nargs="+", metavar="NAME", help="int8-study: only these variants")
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS)
    parser.add_argument("--draw", type=int, default=0, help="another N runs on other images of the slice (default 0)")
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once, one thread each (default 1)")
    output_args(parser)
    return parser


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
