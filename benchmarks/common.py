"""What the benchmark scripts share: where things are, quorum and recipe_runs.py run in processes of
their own on one thread, the vote's scores, and writing one section of RESULTS.md."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "benchmarks"
DATA = HERE / "data"  # git-ignored: slices, photos, trained members, reused across runs
RESULTS = HERE / "RESULTS.md"
# The offline EfficientNet-Lite weights: the checkout's sibling, or the sibling of a worktree's parent.
WEIGHTS = next((d for d in (ROOT.parent / "shared" / "weights", ROOT.parent.parent / "shared" / "weights")
                if d.is_dir()), ROOT.parent / "shared" / "weights")


def step(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def one_thread_env() -> dict[str, str]:
    """A child's environment: one OpenMP thread that sleeps when idle (the machine is shared), this
    checkout's quorum and the benchmark modules importable."""
    path = os.pathsep.join([str(ROOT / "src"), str(HERE), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": path}


def quorum(*args, quiet: bool = True) -> float:
    """A quorum command as a user runs it, in its own niced process on one thread; its seconds."""
    began = time.perf_counter()
    subprocess.run(["nice", "-n", "10", sys.executable, "-m", "quorum", *map(str, args)], check=True,
                   env=one_thread_env(), stdout=subprocess.DEVNULL if quiet else None)
    return time.perf_counter() - began


def finetune_lite(models: Path, name: str, lite: int, data: Path, weights_dir: Path = WEIGHTS, *extra,
                  epochs: int = 8) -> Path:
    """EfficientNet-Lite`lite` at 96 px, 4 frozen + `epochs` - 4 unfrozen epochs, from the offline weights; a model
    already there is reused (delete it to train again)."""
    if not (models / name / "model.json").is_file():
        quorum("finetune", f"timm/tf_efficientnet_lite{lite}", "--data", data, "--image-size", 96, "--epochs", epochs,
               "--unfreeze-after", 4, "--weights", weights_dir / f"tf_efficientnet_lite{lite}.safetensors",
               "--models-dir", models, "--name", name, "--workers", 0, "--device", "cpu", "--quiet", *extra)
    return models / name


def share_folders(files, out: Path) -> Path:
    """OUT/train and OUT/val as `quorum finetune --data` takes a split made beforehand: each (file, subset, label,
    name) of `files` copied to OUT/subset/label/name. Built beside OUT and renamed into place; an OUT already there
    is reused (delete it to build it again)."""
    import shutil

    if out.is_dir():
        return out
    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    for file, subset, label, name in files:
        (work / subset / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(file, work / subset / label / name)
    work.rename(out)
    return out


def accuracy(model_dir: Path, test: Path) -> float:
    """A model's accuracy on a class-folder test set, with `quorum predict` (its CSV kept beside the model and
    reused)."""
    from quorum.predict.table import read_predictions

    out = model_dir.parent / f"{model_dir.name}-test.csv"
    if not out.is_file():
        quorum("predict", str(test), "--out", str(out), "--models-dir", str(model_dir.parent), "--model",
               model_dir.name, "-q")
    frame = read_predictions(out)
    return float((frame["prediction"] == frame["path"].str.split("/").str[0]).mean())


def train_in_process(arguments: list[str], out: Path, label: str) -> dict:
    """`recipe_runs.py ARGUMENTS` (which writes to `out`) in a process of its own on one thread; its
    result.json. A finished run is reused: delete its folder to measure it again."""
    import json

    if not (out / "result.json").is_file():
        step(f"start {label}")
        done = subprocess.run([sys.executable, str(HERE / "recipe_runs.py"), *arguments], env=one_thread_env(),
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{label} failed:\n{done.stderr[-3000:]}")
        step(f"done  {label}")
    return json.loads((out / "result.json").read_text())


def kept_epoch(result: dict) -> int:
    """The epoch a recipe_runs.py run kept (results from before `--keep` call it best_epoch: the same one)."""
    return result.get("kept_epoch", result["best_epoch"])


def scores(predicted: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy and macro F1 of predicted class indices."""
    from sklearn.metrics import f1_score

    return {"accuracy": float((predicted == labels).mean()),
            "macro_f1": float(f1_score(labels, predicted, average="macro"))}


def members_vote(probs: np.ndarray, val_accuracies: list[float], names: list[str] | None = None):
    """quorum's vote over (members, images, classes) probabilities, ties to the member best on validation
    (`names` order equal accuracies, as predict does; default: the given order)."""
    from quorum.predict.vote import default_tie_breaker, vote

    names = names or [f"member{k}" for k in range(len(probs))]
    return vote(probs, default_tie_breaker(list(val_accuracies), names))


def interleaved_speeds(runs: dict, batch: int, repeats: int = 5) -> dict[str, list[float]]:
    """images/s of each way (a callable that runs one batch of `batch` images) over `repeats` one-second
    runs of at least two batches, after two warm-up batches; each way goes first in turn, so that a
    load that comes and goes on a shared machine falls on all of them alike."""
    ways = list(runs)
    speeds: dict[str, list[float]] = {way: [] for way in ways}
    for way in ways:
        runs[way](), runs[way]()  # oneDNN and ONNX Runtime pick their kernels on the first calls
    for repeat in range(repeats):
        for way in ways[repeat % len(ways):] + ways[:repeat % len(ways)]:
            n, began = 0, time.perf_counter()
            while n < 2 or time.perf_counter() - began < 1.0:
                runs[way]()
                n += 1
            speeds[way].append(n * batch / (time.perf_counter() - began))
    return speeds


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def points(x: float) -> str:
    return f"{100 * x:+.1f}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines, then a blank one."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(row) + " |" for row in rows], ""]


def marked(name: str, lines: list[str]) -> str:
    """`lines` between the markers by which `replace_section` finds this script's section again."""
    return "\n".join([f"<!-- {name}: start -->", *lines, f"<!-- {name}: end -->"]) + "\n"


def replace_section(path: Path, text: str, after: str | None = None) -> None:
    """Put `text` (made by `marked`) in place of its previous version in `path`; a new one goes after the last
    section whose name starts with `after` (a script's sections stay together), or at the end. Every other section
    stays as it is."""
    start = text.split("\n", 1)[0]
    end = start.replace(": start -->", ": end -->")
    current = path.read_text() if path.is_file() else ""
    ends = [m.end() for m in re.finditer(rf"<!-- {re.escape(after)}[^>]*: end -->", current)] if after else []
    if start in current and end in current:
        before, rest = current.split(start, 1)
        current = before + text.rstrip("\n") + rest.split(end, 1)[1]
    elif ends:
        current = current[:ends[-1]] + "\n\n" + text.rstrip("\n") + current[ends[-1]:]
    else:
        current = current.rstrip("\n") + ("\n\n" if current else "") + text
    path.write_text(current)


def output_args(parser) -> None:
    """--out and --no-write, as every script that writes a section of RESULTS.md takes them."""
    parser.add_argument("--out", type=Path, default=RESULTS, help="the file whose section this script replaces "
                        "(default benchmarks/RESULTS.md)")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave --out alone")


def publish(text: str, out: Path = RESULTS, write: bool = True, after: str | None = None) -> None:
    """Print a benchmark's section and, unless told not to, put it in place in `out` (see `replace_section`)."""
    print(text)
    if write:
        replace_section(out, text, after)
        step(f"wrote its section of {out}")
