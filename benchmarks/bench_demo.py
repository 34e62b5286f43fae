"""Does the demo's vote beat its best member beyond the one sample? The demo's three members, trained
as `quorum demo` trains them, on fresh draws of sample-sized Fashion-MNIST data, scored on many more
images than the sample's 100.

    python benchmarks/bench_demo.py [--draws 1 2 3 4] [--variants demo seeds ...] [--jobs 2]

1. Each draw (benchmarks/fashion_mnist.py, `draw`): 30 train images per class, as sample_data/labelled,
   which quorum splits 80/20 once per draw (every member and variant shares that split), and a
   disjoint test set of 100 per class from Fashion-MNIST's test split.
2. Each variant is the demo's offline plan (quorum.demo.STEPS: EfficientNet-Lite0/1/2 with the ImageNet
   weights, cache_views=1) with some Recipe fields changed; each member trains in its own process on one
   thread (recipe_runs.py), at most --jobs at a time.
3. Per draw and variant: each member's test accuracy, the vote's by quorum's rule (ties to the member
   with the best val accuracy, as `quorum predict` picks it), and the vote minus the best member.
Runs are kept under benchmarks/data/demo/ and reused; the section between the bench_demo markers
of --out is replaced.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from common import DATA, kept_epoch, marked, members_vote, output_args, publish, train_in_process
from fashion_mnist import make_slice

RUNS = DATA / "demo"
TRAIN_PER_CLASS, TEST_PER_CLASS = 30, 100  # sample_data/labelled has 30 per class

# Recipe fields each variant changes, per member (Lite0, Lite1, Lite2), on top of the demo's plan:
# other training seeds, a longer phase 2, other input sizes, a longer (cached, nearly free) phase 1.
VARIANTS = {
    "demo": [{}, {}, {}],
    "seeds": [{"seed": 0}, {"seed": 1}, {"seed": 2}],
    "4+10": [{"epochs": 14}] * 3,
    "sizes": [{"image_size": 64}, {"image_size": 96}, {"image_size": 128}],
    "12+6": [{"epochs": 18, "unfreeze_after": 12}] * 3,
}


def demo_plans() -> list[dict]:
    """The demo's offline members as Recipe fields (what quorum.demo.finetune_step gives Recipe)."""
    from quorum.demo import STEPS

    return [dict(image_size=step.packaged.image_size, cache_views=1, **step.packaged.fields) for step in STEPS]


def run_member(draw: Path, split: Path, variant: str, lite: int, fields: dict) -> dict:
    out = RUNS / draw.name / variant / f"lite{lite}"
    frozen = fields["unfreeze_after"]
    unfrozen = fields["epochs"] - frozen
    sets = [f"--set={key}={json.dumps(value)}" for key, value in fields.items()
            if key not in ("epochs", "unfreeze_after")]
    result = train_in_process(["quorum", str(lite), str(frozen), str(unfrozen), str(out), "--data", str(draw),
                               "--split", str(split), *sets], out, f"{draw.name}/{variant}/lite{lite}")
    result["probs"] = np.load(out / "test_probs.npy")
    result["labels"] = np.load(out / "test_labels.npy")
    return result


def score(members: list[dict]) -> dict:
    labels = members[0]["labels"]
    probs = np.stack([m["probs"] for m in members])
    accuracies = [float((m["probs"].argmax(1) == labels).mean()) for m in members]
    votes = members_vote(probs, [m["val_accuracy"][kept_epoch(m) - 1] for m in members])  # equal: Lite0, Lite1, Lite2
    vote_accuracy = float((votes.label == labels).mean())
    return {"members": accuracies, "vote": vote_accuracy, "margin": vote_accuracy - max(accuracies),
            "ties": float((votes.decided_by == "tie-breaker").mean()),
            "best_epochs": [kept_epoch(m) for m in members], "minutes": sum(m["seconds"] for m in members) / 60}


def render(scores: dict, variants: list[str], draws: list[int], command: str) -> str:
    lines = ["## The demo's vote beyond its sample (`bench_demo.py`)", "",
             f"`{command}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Each draw: {TRAIN_PER_CLASS} "
             f"Fashion-MNIST train images per class (as sample_data/labelled; quorum's 80/20 split) and a disjoint "
             f"test set of {TEST_PER_CLASS * 10} images. Members: the demo's offline plan (EfficientNet-Lite0/1/2, "
             "ImageNet weights), one thread each. Margin = vote minus the best member, in points.", "",
             "| variant | draw | Lite0 | Lite1 | Lite2 | vote | margin | ties | best epochs | train min |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for variant in variants:
        for draw in draws:
            s = scores[variant][draw]
            lines.append(f"| {variant} | {draw} | " + " | ".join(f"{a:.1%}" for a in s["members"])
                         + f" | {s['vote']:.1%} | {s['margin'] * 100:+.1f} | {s['ties']:.1%} | "
                         + ", ".join(map(str, s["best_epochs"])) + f" | {s['minutes']:.1f} |")
        mean = {key: np.mean([scores[variant][d][key] for d in draws]) for key in ("vote", "margin")}
        members = np.mean([scores[variant][d]["members"] for d in draws], axis=0)
        wins = sum(scores[variant][d]["margin"] > 0 for d in draws)
        lines.append(f"| **{variant}** | mean | " + " | ".join(f"{a:.1%}" for a in members)
                     + f" | {mean['vote']:.1%} | **{mean['margin'] * 100:+.1f}** "
                       f"(above on {wins} of {len(draws)}) | | | |")
    return marked("bench_demo", lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    output_args(parser)
    args = parser.parse_args()
    from quorum.data.split import load_or_make_split

    plans = demo_plans()
    planned = []
    for draw in args.draws:
        root = make_slice(TRAIN_PER_CLASS, TEST_PER_CLASS, draw=draw).root
        (RUNS / root.name).mkdir(parents=True, exist_ok=True)
        load_or_make_split(root / "train", RUNS / root.name, val_fraction=0.2, seed=0)
        planned += [(draw, root, variant, lite, {**plans[lite], **VARIANTS[variant][lite]})
                    for variant in args.variants for lite in range(3)]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: run_member(job[1], RUNS / job[1].name / "split.csv", *job[2:]), planned))
    by_run: dict = {}
    for (draw, _, variant, lite, _), result in zip(planned, results):
        by_run.setdefault(variant, {}).setdefault(draw, [None] * 3)[lite] = result
    scores = {variant: {draw: score(members) for draw, members in draws.items()} for variant, draws in by_run.items()}
    section = render(scores, args.variants, args.draws, " ".join(["python benchmarks/bench_demo.py", *sys.argv[1:]]))
    publish(section, args.out, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
