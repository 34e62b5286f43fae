"""quorum's two-phase recipe against fastai's `fine_tune`, on real data with real pretrained weights.

    python benchmarks/bench_recipe.py [--lites 0 1 2] [--budgets 4+4 4+12] [--fastai-budgets 4+4]
                                      [--jobs 2] [--loaded] [--out FILE] [--no-write]

1. A Fashion-MNIST slice (benchmarks/fashion_mnist.py): 100 train images per class, which quorum
   splits 80/20 into train/val once (split.csv, shared by every run and by fastai), and a disjoint
   test set of 2,000 from Fashion-MNIST's test split.
2. Per EfficientNet-Lite0/1/2 (ImageNet weights from ../shared/weights), each in its own process on
   one thread, at most --jobs at a time: quorum's recipe at each budget (frozen+unfrozen epochs),
   quorum's head only (phase 1 alone), quorum with the old switch (--norm-stats update, Lite0 only)
   and fastai's fine_tune(unfrozen, freeze_epochs=frozen); 96 px, batch 32, other settings default.
3. The kept model of each predicts the test set: accuracy and macro F1 per member, and the vote of
   the three members by quorum's rule (ties to the member with the best val accuracy).
4. --loaded: quorum Lite0 on the CLI's own thread settings, idle against beside a busy process.
Runs are kept under benchmarks/data/recipe/ and reused; the report replaces only its own section
of --out (between the bench_recipe markers).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from common import (
    DATA,
    WEIGHTS,
    members_vote,
    one_thread_env,
    output_args,
    publish,
    scores,
    step,
    train_in_process,
)
from fashion_mnist import make_slice
from recipe_report import render

RUNS = DATA / "recipe"


def budget(text: str) -> tuple[int, int]:
    frozen, unfrozen = text.split("+")
    return int(frozen), int(unfrozen)


def make_split(train: Path) -> Path:
    """quorum's own 80/20 split of train/, made once; every run (and fastai) trains on it."""
    from quorum.data.split import load_or_make_split

    RUNS.mkdir(parents=True, exist_ok=True)
    load_or_make_split(train, RUNS, val_fraction=0.2, seed=0)
    return RUNS / "split.csv"


def run_one(job: dict, data: Path, split: Path) -> dict:
    arguments = [job["system"], str(job["lite"]), str(job["frozen"]), str(job["unfrozen"]), str(RUNS / job["name"]),
                 "--data", str(data), "--split", str(split), *[f"--set={item}" for item in job.get("set", [])]]
    return train_in_process(arguments, RUNS / job["name"], job["name"])


def jobs(lites: list[int], long_lites: list[int], budgets: list[tuple[int, int]],
         fastai_budgets: list[tuple[int, int]]) -> list[dict]:
    """The first budget for every member; the longer ones only for `long_lites`."""
    planned = []  # each quorum run also keeps its phase-1 model: the head-only result (recipe_runs.py)
    for i, (f, u) in enumerate(budgets):
        planned += [dict(system="quorum", lite=n, frozen=f, unfrozen=u, name=f"quorum-{f}+{u}-lite{n}")
                    for n in (lites if i == 0 else long_lites)]
    for i, (f, u) in enumerate(fastai_budgets):
        planned += [dict(system="fastai", lite=n, frozen=f, unfrozen=u, name=f"fastai-{f}+{u}-lite{n}")
                    for n in (lites if i == 0 else long_lites)]
    f, u = budgets[0]
    planned.append(dict(system="quorum", lite=lites[0], frozen=f, unfrozen=u, set=['norm_stats="update"'],
                        name=f"old-switch-{f}+{u}-lite{lites[0]}"))
    return planned


LOADED = {  # label: (competing busy process?, environment overrides)
    "idle": (False, {}),
    "loaded": (True, {}),
    # quorum before: OpenMP's default waiting (an empty OMP_WAIT_POLICY is ignored) and a thread per core
    "loaded, old settings": (True, {"OMP_WAIT_POLICY": "", "OMP_NUM_THREADS": str(os.cpu_count())}),
}


def loaded_runs(data: Path, split: Path) -> dict:
    """Lite0 4+1 through the CLI with quorum's own thread settings (2 loader workers), idle and beside a
    busy process; then beside it with the settings quorum had before. Kept in loaded.json and reused."""
    saved = RUNS / "loaded.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    seconds = {}
    for label, (busy, overrides) in LOADED.items():
        models = RUNS / f"cli-{label.replace(', ', '-').replace(' ', '-')}"
        models.mkdir(parents=True, exist_ok=True)
        (models / "split.csv").write_bytes(split.read_bytes())
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
        env.update(overrides, PYTHONPATH=one_thread_env()["PYTHONPATH"])
        command = [sys.executable, "-m", "quorum", "finetune", "timm/tf_efficientnet_lite0", "--data",
                   str(data / "train"), "--image-size", "96", "--epochs", "5", "--unfreeze-after", "4",
                   "--weights", str(WEIGHTS / "tf_efficientnet_lite0.safetensors"),
                   "--models-dir", str(models), "--quiet"]
        competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        load, began = os.getloadavg()[0], time.perf_counter()
        try:
            subprocess.run(command, env=env, check=True)
        finally:
            if competitor is not None:
                competitor.kill()
        seconds[label] = {"seconds": time.perf_counter() - began, "load_start": load}
        step(f"{label}: {seconds[label]['seconds']:.0f} s")
    saved.write_text(json.dumps(seconds, indent=1))
    return seconds


def vote_accuracy(results: list[dict], names: list[str]) -> dict:
    """quorum's vote over the members' test probabilities; ties go to the best member by val accuracy."""
    probs = np.stack([np.load(r["probs_path"]) for r in results])
    votes = members_vote(probs, [max(r["val_accuracy"]) for r in results], names)
    return scores(votes.label, np.load(results[0]["labels_path"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lites", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--long-lites", type=int, nargs="*", help="members for the budgets after the first "
                        "(default: --lites)")
    parser.add_argument("--budgets", nargs="+", default=["4+4", "4+12"], help="quorum's FROZEN+UNFROZEN epochs")
    parser.add_argument("--fastai-budgets", nargs="*", default=["4+4", "4+12"])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--loaded", action="store_true", help="also time a run idle and beside a busy process")
    parser.add_argument("--only", nargs="*", metavar="TEXT", help="run only the runs whose name holds one of these")
    output_args(parser)
    args = parser.parse_args()
    began = time.perf_counter()
    data = make_slice(100, 200).root
    split = make_split(data / "train")
    long_lites = args.lites if args.long_lites is None else args.long_lites
    planned = jobs(args.lites, long_lites, [budget(b) for b in args.budgets], [budget(b) for b in args.fastai_budgets])
    if args.only:  # the others must have run before: their result.json is read
        first = [job for job in planned if any(text in job["name"] for text in args.only)]
        planned = first + [job for job in planned if job not in first]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(zip([job["name"] for job in planned], pool.map(lambda job: run_one(job, data, split), planned)))
    for name, result in list(results.items()):
        result.update(name=name, probs_path=str(RUNS / name / "test_probs.npy"),
                      labels_path=str(RUNS / name / "test_labels.npy"))
        if name.startswith("quorum-") and (RUNS / name / "head_test_probs.npy").is_file():
            head = f"head-{result['frozen']}+{result['unfrozen']}-lite{result['lite']}"
            results[head] = {**result, "name": head, "unfrozen": 0, "seconds": float("nan"),
                             "val_accuracy": result["val_accuracy"][:result["frozen"]],
                             "probs_path": str(RUNS / name / "head_test_probs.npy")}
    for result in results.values():
        result["test"] = scores(np.load(result["probs_path"]).argmax(1), np.load(result["labels_path"]))
    votes = {}
    for prefix in {name.rsplit("-lite", 1)[0] for name in results if not name.startswith("old-switch")}:
        names = [f"{prefix}-lite{n}" for n in args.lites]
        if all(name in results for name in names):
            votes[prefix] = vote_accuracy([results[n] for n in names], names)
    loaded = loaded_runs(data, split) if args.loaded else None
    command = " ".join(["python benchmarks/bench_recipe.py", *sys.argv[1:]])
    section = render(results, votes, loaded, args.lites, command, (time.perf_counter() - began) / 60)
    publish(section, args.out, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
