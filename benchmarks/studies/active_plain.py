"""The loop's picks without the loop: each draw's `disagreement` pick of `bench_active.py --loop` (the same images
and labels) fine-tuned on the labels alone, no pseudo-labels, as bench_active.py without --loop fine-tunes.

    python benchmarks/studies/active_plain.py [--draws 0 1 2 3 4 5] [--rank disagreement] [--seed 0]

Writes `draw<N>/loop/<rank>/models-plain/` beside the loop's models (reused when there) and prints each draw's
test accuracy; compare with the random picks of `bench_active.py --keep-epoch last` (RESULTS.md).
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, where the shared modules are
from bench_active import RUNS, retrain  # noqa: E402
from common import WEIGHTS, accuracy  # noqa: E402
from fashion_mnist import make_slice  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--rank", default="disagreement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS)
    args = parser.parse_args(argv)

    def plain(draw: int) -> float:
        pick = RUNS / f"draw{draw}" / "loop" / args.rank
        return accuracy(retrain(pick / "models-plain", pick / "data", args.seed, args.weights_dir, "last"),
                        make_slice(30, 200, 300, draw=draw).test)

    with ThreadPoolExecutor(2) as pool:
        for draw, tested in zip(args.draws, pool.map(plain, args.draws)):
            print(f"draw {draw}: {tested:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
