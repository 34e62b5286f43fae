"""Engines (issue 11): the naive way, `quorum predict --engine torch` and quorum's default engine
(ONNX Runtime on the CPU), each with and without --lazy, on the same photos; each member's share of
the matmul limit per engine; label agreement between the engines.

    python benchmarks/bench_engines.py [--images N] [--rounds R] [--trio reference|pretrained] [--out FILE] [--no-write]

Same data and members as run.py (made under benchmarks/data/ on first use). The ways take turns
going first, round by round, so load from other work on a shared machine falls on all alike.
Prints a markdown section; --out writes it to FILE.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as run.py: torch's threads must not spin on a shared CPU

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench_flops import gflop_per_image, matmul_gflops
from bench_predict import naive_predict, round_folders
from common import DATA, WEIGHTS, interleaved_speeds, marked, output_args, publish, step, table
from make_photos import make_labelled_set, make_predict_set
from members import build, trios
from quorum.data.images import scan_images
from quorum.models.bundle import ONNX, load_model, read_info
from quorum.models.inference import engine_threads, onnx_session
from quorum.predict.members import select_models
from quorum.predict.options import PredictOptions
from quorum.predict.pipeline import predict

WAYS = {"naive": None, "torch": ("torch", False), "torch --lazy": ("torch", True),
        "onnx": ("auto", False), "onnx --lazy": ("auto", True)}
TARGETS = {"reference": {"onnx": 2.5}, "pretrained": {"onnx": 3.0, "onnx --lazy": 4.0}}


@dataclass
class TrioResult:
    trio: str
    members: list[str]
    images: int
    seconds: dict[str, float]
    vs_naive_labels: dict[str, int]  # way -> images whose label differs from the naive way's
    engine_labels: int  # images whose vote differs between --engine torch and the default engine
    member_labels: int  # member labels (members x images) that differ between the engines
    max_prob_diff: float  # largest |p| difference between the engines, over every member and class
    lazy_tie_ran: float  # share of images the tie-breaker ran on under --lazy


def bench_trio(name: str, folder: Path, model_dirs: list[Path], tie_breaker: str, rounds: int,
               batch_size: int, workers: int) -> TrioResult:
    paths = scan_images(folder).images
    for path in paths:  # every way then reads the files from the page cache
        path.read_bytes()
    parts = round_folders(folder, paths, rounds)
    tie = [path.name for path in model_dirs].index(tie_breaker)
    warm = scan_images(parts[0]).images[:batch_size]
    naive_predict(warm, model_dirs, tie, batch_size, workers)
    seconds, naive_labels, frames = dict.fromkeys(WAYS, 0.0), [], {way: [] for way in WAYS if way != "naive"}
    for _way, (engine, lazy) in ((w, e) for w, e in WAYS.items() if e):  # warm-up: imports, kernels, sessions
        predict(parts[0], model_dirs, PredictOptions(tie_breaker=tie_breaker, device="cpu", engine=engine, lazy=lazy,
                                                     batch_size=batch_size, workers=workers), quiet=True)
    order = list(WAYS)
    for number, part in enumerate(parts):
        for way in order[number % len(order):] + order[:number % len(order)]:
            began = time.perf_counter()
            if way == "naive":
                naive_labels.append(naive_predict(scan_images(part).images, model_dirs, tie, batch_size, workers))
            else:
                engine, lazy = WAYS[way]
                options = PredictOptions(tie_breaker=tie_breaker, device="cpu", engine=engine, lazy=lazy, probs=True,
                                         batch_size=batch_size, workers=workers)
                frames[way].append(predict(part, model_dirs, options, quiet=True))
            seconds[way] += time.perf_counter() - began
    frames = {way: pd.concat(parts, ignore_index=True) for way, parts in frames.items()}
    classes = np.asarray(read_info(model_dirs[0]).classes, dtype=object)
    naive = classes[np.concatenate(naive_labels)]
    names = [path.name for path in model_dirs]
    torch_rows, onnx_rows = frames["torch"], frames["onnx"]
    numbers = [c for c in torch_rows.columns if c.startswith("p_") or c.endswith("_confidence")]
    return TrioResult(
        name, names, len(paths), seconds,
        {way: int((frame.prediction.to_numpy() != naive).sum()) for way, frame in frames.items()},
        engine_labels=int((torch_rows.prediction != onnx_rows.prediction).sum()),
        member_labels=int(sum((torch_rows[f"{n}_prediction"] != onnx_rows[f"{n}_prediction"]).sum() for n in names)),
        max_prob_diff=float(np.abs(torch_rows[numbers].to_numpy() - onnx_rows[numbers].to_numpy()).max()),
        lazy_tie_ran=float(frames["onnx --lazy"][f"{tie_breaker}_prediction"].notna().mean()))


@dataclass
class ModelSpeed:
    model: str
    image_size: int
    gflop: float
    images_per_s: dict[str, float]  # torch NCHW, torch channels_last, onnxruntime


def model_speeds(model_dir: Path, batch_size: int, repeats: int = 5) -> ModelSpeed:
    """images/s on random pixels (no decoding), the three contenders interleaved, median of `repeats`."""
    model, info = load_model(model_dir, "cpu")
    size = info.image_size
    x = info.preprocessing.normalizer()(torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8))
    channels_last = load_model(model_dir, "cpu")[0].to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    session = onnx_session(model_dir / ONNX, engine_threads())
    runs = {"torch NCHW": lambda: model(x), "torch channels_last": lambda: channels_last(x_cl),
            "onnxruntime": lambda: session.run(None, {"pixels": x.numpy()})}
    with torch.inference_mode():
        speeds = interleaved_speeds(runs, batch_size, repeats)
    return ModelSpeed(model_dir.name, size, gflop_per_image(model, size),
                      {way: statistics.median(values) for way, values in speeds.items()})


def render(results: list[TrioResult], speeds: list[ModelSpeed], matmul: float, command: str, minutes: float,
           load: tuple[float, float]) -> str:
    lines = ["## Engines: ONNX Runtime against torch (issue 11)", "",
             (f"`{command}` took {minutes:.0f} min on {os.cpu_count()} cores, torch {torch.__version__} with "
              f"{torch.get_num_threads()} threads, ONNX Runtime with {engine_threads()} (no spinning); load average "
              f"{load[0]:.1f} at the start and {load[1]:.1f} at the end. Every way predicts the same "
              f"{results[0].images if results else 0} photos (500x375 JPEG), in turns; batch 32, 2 loader workers. "
              "naive: each member decodes the folder alone, NCHW torch, then the vote. `onnx` is quorum's default "
              "engine on the CPU (`--engine auto`)."), ""]
    rows = []
    for r in results:
        for way in WAYS:
            rows.append([r.trio, way, f"{r.seconds[way]:.1f}", f"{r.images / r.seconds[way]:.1f}",
                         f"{r.seconds['naive'] / r.seconds[way]:.2f}x",
                         "-" if way == "naive" else str(r.vs_naive_labels[way])])
    lines += table(["trio", "way", "seconds", "images/s", "vs naive", "labels differing from naive"], rows)
    rows = [[r.trio, f"{r.engine_labels} of {r.images}", f"{r.member_labels} of {r.images * len(r.members)}",
             f"{r.max_prob_diff:.1e}", f"{r.lazy_tie_ran:.0%}"] for r in results]
    lines += ["Agreement between `--engine torch` and the default engine (full runs):", ""]
    lines += table(["trio", "votes differing", "member labels differing", "largest probability difference",
                     "tie-breaker ran (--lazy)"], rows)
    rows = []
    for s in speeds:
        cells = [s.model, str(s.image_size), f"{s.gflop:.3f}"]
        for way in ("torch NCHW", "torch channels_last", "onnxruntime"):
            cells += [f"{s.images_per_s[way]:.1f}", f"{s.gflop * s.images_per_s[way] / matmul:.0%}"]
        cells.append(f"{s.images_per_s['onnxruntime'] / s.images_per_s['torch channels_last']:.2f}x")
        rows.append(cells)
    lines += [(f"Each member against the hardware: float32 2048x2048 matmul **{matmul:.0f} GFLOP/s**; images/s on "
               "random pixels (no decoding), batch 32, the three interleaved, median of 5 one-second runs; "
               "share = GFLOP/s / matmul's."), ""]
    lines += table(["model", "px", "GFLOP/image", "torch NCHW img/s", "share", "channels_last img/s", "share",
                     "onnxruntime img/s", "share", "ORT / channels_last"], rows)
    rows = []
    for r in results:
        for way, target in TARGETS.get(r.trio, {}).items():
            ratio = r.seconds["naive"] / r.seconds[way]
            same = r.vs_naive_labels[way] == 0 and r.engine_labels <= 0.001 * r.images and r.max_prob_diff <= 1e-4
            rows.append([f"{way} >= {target}x naive ({r.trio})", f"{ratio:.2f}x",
                         "yes" if ratio >= target and same else "**no**"])
        agree = 1 - r.engine_labels / r.images
        rows.append([f"labels identical to --engine torch on >= 99.9%, probabilities within 1e-4 ({r.trio})",
                     f"{agree:.2%}, {r.max_prob_diff:.1e}", "yes" if agree >= 0.999 and r.max_prob_diff <= 1e-4
                     else "**no**"])
    lines += ["Targets:", ""] + table(["target", "measured", "met"], rows)
    return marked("bench_engines", lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="photos in the predict set (default 1000)")
    parser.add_argument("--rounds", type=int, default=5, help="slices the photos are timed in (default 5)")
    parser.add_argument("--trio", choices=["reference", "pretrained"], action="append",
                        help="only this trio (repeatable; default both)")
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS)
    output_args(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    began, load = time.perf_counter(), os.getloadavg()[0]
    folder, labelled = make_predict_set(args.images), make_labelled_set()
    sizes = {"reference": (64, 224, 224), "pretrained": (64, 224, 260)}
    results, speeds = [], []
    for trio in trios(DATA / "models", labelled, args.weights_dir, sizes, 20, 2):
        if args.trio and trio.name not in args.trio:
            continue
        model_dirs = build(trio)
        select_models(model_dirs[0].parent)  # fails now, not after an hour, if a bundle is broken
        step(f"{trio.name}: predict, 5 ways")
        results.append(bench_trio(trio.name, folder, model_dirs, trio.tie_breaker, args.rounds, 32, 2))
        step(f"{trio.name}: each member's images/s")
        speeds += [model_speeds(path, 32) for path in model_dirs if path.name not in {s.model for s in speeds}]
    matmul = matmul_gflops()
    command = " ".join(["python benchmarks/bench_engines.py", *sys.argv[1:]])
    report = render(results, speeds, matmul, command, (time.perf_counter() - began) / 60, (load, os.getloadavg()[0]))
    publish(report, args.out, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
