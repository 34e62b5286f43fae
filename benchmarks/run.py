"""quorum's benchmarks: predict (naive vs quorum vs --lazy), finetune (cached vs plain), GFLOP/s.

    python benchmarks/run.py [--images N] [--quick] [--weights-dir DIR] [--out FILE] [--all]

Prints a markdown report and puts it in place of its own section of benchmarks/RESULTS.md (a --quick
run writes only with --out). Every speed is a ratio against a baseline timed in the same run, since
the CPU may be shared. Photos and fine-tuned members are made under benchmarks/data/ on first use and
reused. --all (`make bench`) then runs every other benchmark of RESULTS.md (OTHERS), each replacing
its own section: hours on 2 cores, though each reuses what it trained before.
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: with its default waiting, a thread that another process preempts
# stalls every parallel region (up to 50x slower inference on a shared 2-core machine).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench_finetune import bench_finetune
from bench_flops import matmul_gflops, model_flops
from bench_predict import bench_predict
from common import DATA, HERE, RESULTS, WEIGHTS, publish, step
from make_photos import make_labelled_set, make_predict_set
from members import build, trios
from report import Results, machine, render

# The other benchmarks whose sections of RESULTS.md are current, with the arguments that wrote them.
OTHERS = [
    ("bench_engines.py", []),
    ("bench_recipe.py", ["--loaded"]),
    ("bench_demo.py", []),
    ("bench_loop.py", []),
    ("bench_calibration.py", []),
    ("bench_unknown.py", []),
    ("bench_vote.py", []),
    ("bench_active.py", []),
    ("bench_deploy.py", []),
]


@dataclass(frozen=True)
class Settings:
    images: int = 1000
    batch_size: int = 32
    workers: int = 2
    sizes: dict = field(default_factory=lambda: {"reference": (64, 224, 224), "pretrained": (64, 224, 260)})
    member_epochs: int = 20
    finetune_size: int = 224
    finetune_epochs: int = 10
    flops_batch: int = 32
    rounds: int = 4  # the predict set is timed in this many slices, the three ways taking turns
    models_dir: Path = DATA / "models"


# The smoke run: the same steps on few images, small inputs and few epochs, with its own models.
QUICK = Settings(images=32, batch_size=16, sizes={"reference": (32, 168, 64), "pretrained": (32, 168, 64)},
                 member_epochs=1, finetune_size=64, finetune_epochs=2, flops_batch=8, rounds=2,
                 models_dir=DATA / "models-quick")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, help="photos in the predict set (default 1000; 32 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a small smoke run: minutes, not figures to quote")
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS,
                        help="folder with tf_efficientnet_lite{0,2}.safetensors (default <repo>/../shared/weights)")
    parser.add_argument("--out", type=Path, help="the file whose section it replaces (default benchmarks/RESULTS.md; "
                        "none with --quick)")
    parser.add_argument("--all", action="store_true", help="then run every other benchmark of RESULTS.md (OTHERS)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: all)")
    return parser


def main(args: argparse.Namespace) -> int:
    if args.quick and args.all:
        print("Error: --all runs the full benchmarks; leave out --quick", file=sys.stderr)
        return 2
    settings = QUICK if args.quick else Settings()
    images = args.images or settings.images
    missing = [name for name in ("tf_efficientnet_lite0", "tf_efficientnet_lite2")
               if not (args.weights_dir / f"{name}.safetensors").is_file()]
    if missing:
        print(f"Error: {args.weights_dir} lacks {missing[0]}.safetensors: point --weights-dir at the offline weights",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    began, results = time.perf_counter(), Results(machine(settings.batch_size, settings.workers))

    step(f"photos: {images} to predict on, 400 labelled")
    folder, labelled = make_predict_set(images), make_labelled_set()
    for trio in trios(settings.models_dir, labelled, args.weights_dir, settings.sizes, settings.member_epochs,
                      settings.workers):
        step(f"{trio.name} trio: fine-tune the members that are missing")
        model_dirs = build(trio)
        step(f"{trio.name} trio: predict naive, quorum, --lazy")
        results.predict.append(bench_predict(trio.name, folder, folder.with_suffix(".csv"), model_dirs,
                                             trio.tie_breaker, settings.batch_size, settings.workers,
                                             warmup_images=settings.batch_size, rounds=settings.rounds))
        results.model_dirs += [path for path in model_dirs if path.name not in {p.name for p in results.model_dirs}]

    step(f"finetune: {settings.finetune_epochs} frozen epochs, plain then cached")
    results.finetune = bench_finetune(labelled, args.weights_dir / "tf_efficientnet_lite0.safetensors",
                                      DATA / ("finetune-quick" if args.quick else "finetune"), settings.finetune_size,
                                      settings.finetune_epochs, settings.workers)
    step("GFLOP/s: matmul, then each member")
    results.matmul, results.flops_batch = matmul_gflops(), settings.flops_batch
    results.flops = [model_flops(path, settings.flops_batch) for path in results.model_dirs]

    results.minutes = (time.perf_counter() - began) / 60
    report = render(results, command=" ".join(["python benchmarks/run.py", *sys.argv[1:]]), quick=args.quick)
    out = args.out or (None if args.quick else RESULTS)
    publish(report, out, write=out is not None)
    differ = [(r.trio, way, n) for r in results.predict for way, n in r.mismatches.items() if n]
    for trio, way, n in differ:  # a speed-up that changes predictions is a bug, not a result
        print(f"Error: {way} gave other labels than the naive way on {n} images ({trio} trio)", file=sys.stderr)
    if differ:
        return 1
    return run_others(out or RESULTS, args.weights_dir) if args.all else 0


def run_others(out: Path, weights_dir: Path) -> int:
    """Each of OTHERS in its own process, one after another (each picks its own threads); the first
    failure stops the run."""
    for script, arguments in OTHERS:
        step(f"{script} {' '.join(arguments)}")
        extra = ["--weights-dir", str(weights_dir)] if script in ("bench_active.py", "bench_deploy.py",
                                                                   "bench_engines.py") else []
        done = subprocess.run([sys.executable, str(HERE / script), *arguments, *extra, "--out", str(out)])
        if done.returncode != 0:
            print(f"Error: {script} failed (exit {done.returncode}); the sections before it are written",
                  file=sys.stderr)
            return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
