"""The epoch best-on-validation keeps against the last epoch, on the same run's test accuracy (issue 19).

    git archive 9f40278 | tar -x -C SNAP && patch -d SNAP -p1 < benchmarks/studies/test_every_epoch.patch
    python benchmarks/studies/paired_epochs.py SNAP [--ranks random margin disagreement] [--seed 0] [--root DIR]

The patch (a study's, not quorum's) makes `quorum finetune` score the folder named by $PAIR_TEST after every epoch
and write it to history.csv's `test_accuracy`; the kept model is unchanged. Each of bench_active's retrain
configurations (DIR = benchmarks/data/active: per draw and ranking, the labelled share plus that ranking's 100
images, Lite0 at 96 px, 4 frozen + 4 unfrozen epochs, 60 validation images) is fine-tuned once more with the
patched code, so the test accuracy of the epoch it keeps and of its last epoch come from one and the same run.
Prints one JSON line per run (runs already made are read again, not retrained) and the mean difference.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, where the shared modules are
from common import DATA, WEIGHTS, kept_epoch  # noqa: E402

OUT = DATA / "paired-epochs"


def run_once(snapshot: Path, pick: Path, test: Path, out: Path, seed: int) -> dict:
    """Fine-tune Lite0 on `pick`'s data with the patched code in `snapshot`; its kept epoch and test curve."""
    name = "lite0" + (f"-seed{seed}" if seed else "")
    if not (out / name / "history.csv").is_file():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(pick / "models" / "split.csv", out / "split.csv")  # the pick's own split
        env = dict(os.environ, PYTHONPATH=str(snapshot / "src"), OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE",
                   PAIR_TEST=str(test))
        subprocess.run([sys.executable, "-m", "quorum", "finetune", "timm/tf_efficientnet_lite0", "--data",
                        str(pick / "data"), "--image-size", "96", "--epochs", "8", "--unfreeze-after", "4", "--weights",
                        str(WEIGHTS / "tf_efficientnet_lite0.safetensors"), "--models-dir", str(out), "--name", name,
                        "--workers", "0", "--device", "cpu", "--quiet", "--seed", str(seed)], env=env, check=True)
    history = pd.read_csv(out / name / "history.csv")
    kept = kept_epoch(json.loads((out / name / "model.json").read_text()))
    return {"run": f"{out.parent.name}/{out.name}/{name}", "kept": kept,
            "test_kept": round(float(history["test_accuracy"][kept - 1]), 4),
            "test_last": round(float(history["test_accuracy"].iloc[-1]), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("snapshot", type=Path, help="a copy of quorum with test_every_epoch.patch applied")
    parser.add_argument("--ranks", nargs="+", default=["random", "margin", "disagreement"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=DATA / "active", help="bench_active's cache")
    args = parser.parse_args()
    results = []
    for rank in args.ranks:
        for draw in sorted(args.root.glob("draw*")):
            number = int(draw.name[4:])
            test = args.root.parent / ("fashion-mnist-30-200-u300" + (f"-draw{number}" if number else "")) / "test"
            results.append(run_once(args.snapshot, draw / rank, test, OUT / draw.name / rank, args.seed))
            print(json.dumps(results[-1]), flush=True)
    gains = pd.Series([r["test_last"] - r["test_kept"] for r in results])
    earlier = sum(r["kept"] < 8 for r in results)
    print(f"{len(results)} runs, {earlier} kept an earlier epoch than the last; test(last) - test(kept): mean "
          f"{gains.mean():+.2%}, from {gains.min():+.2%} to {gains.max():+.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
