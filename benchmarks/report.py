"""run.py's section of RESULTS.md: the machine it ran on, then one markdown table per benchmark and the targets."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from bench_finetune import FinetuneResult
from bench_flops import FlopsResult
from bench_predict import PredictResult
from common import ROOT, marked, table

WAY_NAMES = {"naive": "naive", "quorum": "`quorum predict`", "lazy": "`quorum predict --lazy`"}
TARGETS = {"quorum": 1.5, "lazy": 3.0, "cached": 5.0, "accuracy_points": 1.0}


@dataclass
class Results:
    machine: dict
    predict: list[PredictResult] = field(default_factory=list)
    model_dirs: list[Path] = field(default_factory=list)
    finetune: FinetuneResult | None = None
    matmul: float = 0.0
    flops_batch: int = 0
    flops: list[FlopsResult] = field(default_factory=list)
    minutes: float = 0.0


def machine(batch_size: int, workers: int) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = " + uncommitted changes" if _git("status", "--porcelain", "--untracked-files=no") else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "batch_size": batch_size, "workers": workers, "load_start": os.getloadavg()[0],
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": f"{commit}{dirty}"}


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def render(results: Results, command: str, quick: bool = False) -> str:
    m = results.machine
    lines = ["## Predict, finetune and the hardware (`run.py`)", "",
             (f"Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}, {m['threads']} threads, "
              f"OMP_WAIT_POLICY={m['omp_wait_policy']}; "
              f"batch size {m['batch_size']}, {m['workers']} loader workers. {m['date']}, commit {m['commit']}. "
              f"`{command}` took {results.minutes:.0f} min. Load average {m['load_start']:.1f} at the start and "
              f"{os.getloadavg()[0]:.1f} at the end: the CPU may be shared, which is why every figure is a ratio "
              "to a baseline timed in the same run."), ""]
    if quick:
        lines += [("**A --quick smoke run**: few images, small inputs, 1-2 epochs. Its figures say the steps work, "
                  "not whether the targets are met."), ""]
    lines += _predict(results.predict) + _compute_share(results) + _finetune(results.finetune) + _flops(results)
    lines += _targets(results)
    return marked("run", lines)


def _predict(results: list[PredictResult]) -> list[str]:
    if not results:
        return []
    lines = [f"### Predict: {results[0].images} photos, 500x375 JPEG", "",
             ("naive: each member decodes the folder with its own DataLoader, one after another, then the vote. "
             "Labels: images where the way's label differs from the naive way's (must be 0)."), ""]
    rows = []
    for r in results:
        for way in ("naive", "quorum", "lazy"):
            seconds = r.seconds[way]
            rows.append([r.trio, WAY_NAMES[way],
                         f"{seconds:.1f}", f"{r.images / seconds:.1f}", f"{r.seconds['naive'] / seconds:.2f}x",
                         "-" if way == "naive" else str(r.mismatches[way])])
    lines += table(["trio", "way", "seconds", "images/s", "vs naive", "labels differing"], rows)
    rows = [[r.trio, ", ".join(f"{name} {r.accuracy[name]:.0%}" for name in r.members), f"{r.accuracy['vote']:.0%}",
             f"{r.cheap_agree:.0%}", f"{r.expensive_ran:.0%}", f"{r.top_class_share:.0%}"] for r in results]
    lines += ["Members (the last is the tie-breaker) and their accuracy on the photos:", ""]
    lines += table(["trio", "members and accuracy", "vote accuracy", "2 cheapest agree", "tie-breaker ran (--lazy)",
                     "commonest label"], rows)
    lines += [("The reference trio has no pretrained weights here (none can be downloaded), so its backbones are "
              "random and only the heads trained: its cost per image is the real one, its agreement is not "
              "(see the commonest label). The pretrained trio starts from the offline ImageNet weights: its "
              "agreement is a real one."), ""]
    return lines


def _compute_share(results: Results) -> list[str]:
    """Where predict's time goes: the members' forward passes, timed alone in the hardware table, against the rest."""
    speeds = {f.model: (f.images_per_s, f.images_per_s_channels_last) for f in results.flops}
    rows = []
    for r in results.predict:
        if not all(name in speeds for name in r.members):
            return []
        for way in ("naive", "quorum", "lazy"):
            ran = r.lazy_ran if way == "lazy" else dict.fromkeys(r.members, 1.0)
            layout = 1 if way != "naive" and r.channels_last else 0  # the layout this way runs the members in
            compute = sum(ran[name] * r.images / speeds[name][layout] for name in r.members)
            rows.append([r.trio, WAY_NAMES[way], "channels_last" if layout else "NCHW", f"{r.seconds[way]:.1f}",
                         f"{compute:.1f}", f"{compute / r.seconds[way]:.0%}"])
    lines = [("Where the time goes: the members' forward passes alone (images / their images/s in the hardware "
              "table below, in the layout the way runs them, times the share of images each ran on) against the "
              "way's wall-clock seconds; the rest is decoding not hidden behind compute, loading and start-up."), ""]
    return lines + table(["trio", "way", "layout", "seconds", "members' forward (s)", "share"], rows)


def _finetune(r: FinetuneResult | None) -> list[str]:
    if r is None:
        return []
    lines = [f"### Finetune: phase 1, {r.epochs} frozen epochs of {r.backbone} at {r.image_size} px", "",
             (f"{r.train_images} train and {r.val_images} val photos (500x375 JPEG), offline ImageNet weights, "
             "same recipe and seed; timed whole (split, model, cache, epochs, saving)."), ""]
    rows = [[way, f"{r.seconds[way]:.1f}", f"{r.seconds['plain'] / r.seconds[way]:.2f}x", f"{r.val_accuracy[way]:.1%}"]
            for way in ("plain", "cached")]
    return lines + table(["way", "seconds", "vs plain", "val accuracy"], rows)


def _flops(results: Results) -> list[str]:
    if not results.flops:
        return []
    lines = ["### Models against the hardware", "",
             (f"float32 matmul 2048x2048 @ 2048x2048: **{results.matmul:.0f} GFLOP/s**. Inference on random "
              f"tensors (no decoding), batches of {results.flops_batch}, in NCHW (what the naive way runs) and "
              "channels_last (what quorum predict runs, where the table above says so)."), ""]
    rows = []
    for f in results.flops:
        nchw, nhwc = f.gflop_per_image * f.images_per_s, f.gflop_per_image * f.images_per_s_channels_last
        rows.append([f.model, str(f.image_size), f"{f.gflop_per_image:.3f}", f"{f.images_per_s:.1f}", f"{nchw:.1f}",
                     f"{f.images_per_s_channels_last:.1f}", f"{nhwc:.1f}", f"{max(nchw, nhwc) / results.matmul:.0%}"])
    return lines + table(["model", "px", "GFLOP/image", "NCHW images/s", "NCHW GFLOP/s", "channels_last images/s",
                           "channels_last GFLOP/s", "best, of matmul"], rows)


def _targets(results: Results) -> list[str]:
    rows = []
    for r in results.predict:
        quorum, lazy = r.seconds["naive"] / r.seconds["quorum"], r.seconds["naive"] / r.seconds["lazy"]
        same = "same labels" if not any(r.mismatches.values()) else "LABELS DIFFER"
        rows.append([f"quorum predict >= {TARGETS['quorum']}x naive ({r.trio})", f"{quorum:.2f}x, {same}",
                     _met(quorum >= TARGETS["quorum"] and same == "same labels")])
        note = f"{r.cheap_agree:.0%} agree, tie-breaker ran on {r.expensive_ran:.0%}"
        if r.top_class_share >= 0.9:
            note += f"; degenerate: {r.top_class_share:.0%} of images get one label"
        rows.append([f"--lazy >= {TARGETS['lazy']}x naive where members mostly agree ({r.trio})",
                     f"{lazy:.2f}x ({note}), {same}", _met(lazy >= TARGETS["lazy"] and same == "same labels")])
    f = results.finetune
    if f:
        ratio = f.seconds["plain"] / f.seconds["cached"]
        points = 100 * abs(f.val_accuracy["cached"] - f.val_accuracy["plain"])
        rows.append([f"phase 1 cached >= {TARGETS['cached']}x plain", f"{ratio:.2f}x",
                     _met(ratio >= TARGETS["cached"])])
        rows.append([f"cached val accuracy within {TARGETS['accuracy_points']:.0f} point of plain",
                     f"{points:.1f} points ({f.val_accuracy['cached']:.1%} vs {f.val_accuracy['plain']:.1%})",
                     _met(points <= TARGETS["accuracy_points"] + 1e-9)])
    return ["### Targets", ""] + table(["target", "measured", "met"], rows) if rows else []


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"
