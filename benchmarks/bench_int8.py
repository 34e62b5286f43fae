"""int8 members (issue 22): what `quorum export --int8` gains in speed and costs in accuracy.

    python benchmarks/bench_int8.py [--models-dir DIR] [--test DIR] [--images N] [--rounds R] [--out FILE]

1. Accuracy: the Lite trio (EfficientNet-Lite0/1/2 at 96 px, 4 frozen + 4 unfrozen epochs, offline ImageNet
   weights) fine-tuned on the recipe benchmark's Fashion-MNIST slice (100 train images per class, quorum's
   80/20 split), each member's validation and test accuracy as float32 and int8 (2,000 test images), and the
   vote's. Models are trained here unless --models-dir holds them already.
2. Graph speed: each member's graph and the reference trio's (mobilenet_v2 at 64 and 224 px, resnet50 at 224;
   random weights: speed does not depend on them) as float32 and int8 under ONNX Runtime, random pixels
   (no decoding), batch 32, the two interleaved, median of 5 one-second runs.
3. predict: the reference trio on the predict benchmark's photos (benchmarks/make_photos.py), the naive way
   (each member decodes the folder alone, torch) against `quorum predict --engine onnx` and `--engine int8`,
   in turns, round by round.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_predict import _round_folders, naive_predict
from fashion_mnist import DATA, ROOT, make_slice
from make_photos import make_labelled_set, make_predict_set
from members import build, trios

from quorum.data.images import find_images
from quorum.models import onnx_export
from quorum.models.bundle import INT8_ONNX, ONNX, read_info
from quorum.models.inference import engine_threads, onnx_session
from quorum.models.quantize import quantize_graph, quantize_models
from quorum.predict.members import select_models
from quorum.predict.pipeline import predict

RUNS = DATA / "int8"
LITES = (0, 1, 2)


def train_lite_trio(models_dir: Path, train: Path, weights_dir: Path) -> list[Path]:
    """The recipe benchmark's 4+4 plan, one member per process on one thread, as a user would run it."""
    for lite in LITES:
        if (models_dir / f"lite{lite}" / "model.json").is_file():
            continue
        subprocess.run([sys.executable, "-m", "quorum", "finetune", f"timm/tf_efficientnet_lite{lite}", "--data",
                        str(train), "--image-size", "96", "--epochs", "8", "--unfreeze-after", "4", "--weights",
                        str(weights_dir / f"tf_efficientnet_lite{lite}.safetensors"), "--models-dir", str(models_dir),
                        "--name", f"lite{lite}", "--workers", "0", "--device", "cpu", "--quiet"],
                       check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return [models_dir / f"lite{lite}" for lite in LITES]


def accuracy_rows(model_dirs: list[Path], test: Path) -> list[list[str]]:
    """Per member and for the vote: val and test accuracy, float32 and int8."""
    rows, frames = [], {}
    for engine in ("onnx", "int8"):
        frames[engine] = predict(test, model_dirs, engine=engine, device="cpu", quiet=True, workers=2)
    truth = frames["onnx"]["path"].str.split("/").str[0].to_numpy()
    for model_dir in model_dirs:
        info = read_info(model_dir)
        val = info.raw["int8"]
        test_acc = {engine: float((frames[engine][f"{model_dir.name}_prediction"].to_numpy() == truth).mean())
                    for engine in frames}
        rows.append([model_dir.name, f"{val['val_accuracy_fp32']:.1%}", f"{val['val_accuracy_int8']:.1%}",
                     f"{test_acc['onnx']:.2%}", f"{test_acc['int8']:.2%}",
                     f"{100 * (test_acc['int8'] - test_acc['onnx']):+.2f}"])
    vote = {engine: float((frame["prediction"].to_numpy() == truth).mean()) for engine, frame in frames.items()}
    agree = float((frames["onnx"]["prediction"] == frames["int8"]["prediction"]).mean())
    rows.append(["vote", "", "", f"{vote['onnx']:.2%}", f"{vote['int8']:.2%}",
                 f"{100 * (vote['int8'] - vote['onnx']):+.2f} (labels agree on {agree:.1%})"])
    return rows


class RandomBatches:
    """Calibration for graphs whose speed alone is measured: a few batches of random normalised pixels."""

    def __init__(self, size: int, batches: int = 4):
        generator = np.random.default_rng(0)
        self.batches = iter([{"pixels": generator.normal(size=(8, 3, size, size)).astype(np.float32)}
                             for _ in range(batches)])

    def get_next(self):
        return next(self.batches, None)


def graph_speeds(model_dir: Path, repeats: int = 5, batch: int = 32) -> tuple[float, float]:
    """images/s of model.onnx and model.int8.onnx on random pixels, interleaved, median of `repeats`."""
    size = read_info(model_dir).image_size
    x = np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)
    sessions = [onnx_session(model_dir / graph, engine_threads()) for graph in (ONNX, INT8_ONNX)]
    speeds = [[], []]
    for session in sessions:
        session.run(None, {"pixels": x})
    for repeat in range(repeats):
        for k in (0, 1) if repeat % 2 == 0 else (1, 0):
            n, began = 0, time.perf_counter()
            while n < 2 or time.perf_counter() - began < 1.0:
                sessions[k].run(None, {"pixels": x})
                n += 1
            speeds[k].append(n * batch / (time.perf_counter() - began))
    return statistics.median(speeds[0]), statistics.median(speeds[1])


def quantize_for_speed(model_dir: Path) -> None:
    """model.int8.onnx for a model whose training images don't matter (random weights, speed only)."""
    if not onnx_export.is_current(model_dir):
        onnx_export.export_onnx(model_dir)
    if not onnx_export.is_current(model_dir, graph=INT8_ONNX):
        quantize_graph(model_dir / ONNX, model_dir / INT8_ONNX, RandomBatches(read_info(model_dir).image_size))
        onnx_export.tag_weights(model_dir / INT8_ONNX, onnx_export.weights_digest(model_dir))


def predict_speeds(folder: Path, model_dirs: list[Path], tie_breaker: str, rounds: int) -> dict[str, float]:
    """Seconds for the naive way, `--engine onnx` and `--engine int8` on the same photos, in turns."""
    paths = find_images(folder)
    for path in paths:
        path.read_bytes()  # every way then reads from the page cache
    parts = _round_folders(folder, paths, rounds)
    tie = [path.name for path in model_dirs].index(tie_breaker)
    ways = ["naive", "onnx", "int8"]
    for engine in ways[1:]:  # warm-up: sessions, kernels
        predict(parts[0], model_dirs, tie_breaker=tie_breaker, device="cpu", engine=engine, quiet=True, workers=2)
    seconds = dict.fromkeys(ways, 0.0)
    for number, part in enumerate(parts):
        for way in ways[number % 3:] + ways[:number % 3]:
            began = time.perf_counter()
            if way == "naive":
                naive_predict(find_images(part), model_dirs, tie, 32, 2)
            else:
                predict(part, model_dirs, tie_breaker=tie_breaker, device="cpu", engine=way, quiet=True, workers=2)
            seconds[way] += time.perf_counter() - began
    return {way: len(paths) / s for way, s in seconds.items()}


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(row) + " |" for row in rows], ""]


def main(args: argparse.Namespace) -> int:
    began, load = time.perf_counter(), os.getloadavg()[0]
    torch.set_num_threads(engine_threads())
    lines = ["## int8 members (issue 22)", ""]
    slice_ = make_slice(100, 200)
    test = args.test or slice_.test
    models_dir = args.models_dir or RUNS / "lite"
    lite_dirs = train_lite_trio(models_dir, slice_.train, args.weights_dir)
    quantize_models(lite_dirs)
    print(f"[{time.strftime('%H:%M:%S')}] accuracy", file=sys.stderr, flush=True)
    lines += [f"Accuracy, float32 and int8 graphs (the Lite trio, {len(find_images(test))} test images):", ""]
    lines += _table(["member", "val fp32", "val int8", "test fp32", "test int8", "test points"],
                    accuracy_rows(lite_dirs, test))
    labelled = make_labelled_set()
    reference = next(t for t in trios(DATA / "models", labelled, args.weights_dir,
                                      {"reference": (64, 224, 224), "pretrained": (64, 224, 260)}, 20, 2)
                     if t.name == "reference")
    reference_dirs = build(reference)
    for model_dir in reference_dirs:
        quantize_for_speed(model_dir)
    print(f"[{time.strftime('%H:%M:%S')}] graph speeds", file=sys.stderr, flush=True)
    rows = []
    for model_dir in [*lite_dirs, *reference_dirs]:
        fp32, int8 = graph_speeds(model_dir)
        size_mb = [(model_dir / graph).stat().st_size / 1e6 for graph in (ONNX, INT8_ONNX)]
        rows.append([model_dir.name, f"{fp32:.0f}", f"{int8:.0f}", f"{int8 / fp32:.2f}x",
                     f"{size_mb[0]:.1f}", f"{size_mb[1]:.1f}"])
    lines += [f"Graph speed under ONNX Runtime ({engine_threads()} threads, no spinning), images/s on random pixels, "
              "batch 32, interleaved, median of 5 one-second runs:", ""]
    lines += _table(["model", "fp32 img/s", "int8 img/s", "int8 / fp32", "fp32 MB", "int8 MB"], rows)
    print(f"[{time.strftime('%H:%M:%S')}] predict", file=sys.stderr, flush=True)
    folder = make_predict_set(args.images)
    speeds = predict_speeds(folder, reference_dirs, reference.tie_breaker, args.rounds)
    lines += [f"`quorum predict` with the reference trio on {args.images} photos (500x375 JPEG), against the naive "
              "way, in turns:", ""]
    lines += _table(["way", "images/s", "vs naive"],
                    [[way, f"{s:.1f}", f"{s / speeds['naive']:.2f}x"] for way, s in speeds.items()])
    command = " ".join(["python benchmarks/bench_int8.py", *sys.argv[1:]])
    lines.insert(2, f"`{command}` took {(time.perf_counter() - began) / 60:.0f} min on {os.cpu_count()} cores; load "
                    f"average {load:.1f} at the start and {os.getloadavg()[0]:.1f} at the end. "
                    f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n")
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")
    return 0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, help="the Lite trio (lite0, lite1, lite2); trained if missing")
    parser.add_argument("--test", type=Path, help="labelled test images (class folders) [default: the slice's]")
    parser.add_argument("--images", type=int, default=1000, help="photos in the predict set (default 1000)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--weights-dir", type=Path, default=ROOT.parent / "shared" / "weights")
    parser.add_argument("--out", type=Path, help="write the section to this file too")
    return parser


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
