"""One training run of bench_recipe.py, in a process of its own: quorum's recipe or fastai's fine_tune.

    python benchmarks/recipe_runs.py quorum|fastai LITE FROZEN UNFROZEN OUT_DIR [--set field=value ...]

Both train on the same images (quorum's split.csv), at the same size, with the same ImageNet weights,
for the same epochs, on one thread; then predict the test images. OUT_DIR gets result.json (per-epoch
val accuracy, seconds) and test_probs.npy (classes in sorted order, as both systems keep them).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads: one thread per run, two runs at a time

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common import WEIGHTS as WEIGHTS_DIR

SIZE, BATCH = 96, 32


def test_items(test_root: Path, classes: list[str]) -> list[tuple[str, int]]:
    return [(p.relative_to(test_root).as_posix(), classes.index(p.parent.name))
            for p in sorted(test_root.glob("*/*.png"))]


def run_quorum(lite: int, frozen: int, unfrozen: int, data: Path, test_root: Path, split_csv: Path, out: Path,
               fields: dict) -> dict:
    from safetensors.torch import save_file

    from quorum.data.datasets import LabelledImages, make_loader
    from quorum.models.bundle import load_model
    from quorum.models.inference import TorchInference
    from quorum.train import checkpoint
    from quorum.train.finetune import finetune
    from quorum.train.loop import evaluate
    from quorum.train.recipe import Recipe

    models = out / "models"
    models.mkdir(parents=True)
    shutil.copy(split_csv, models / "split.csv")  # the same split as every other run
    settings = dict(backbone=f"timm/tf_efficientnet_lite{lite}", data=str(data), image_size=SIZE, batch_size=BATCH,
                    epochs=frozen + unfrozen, unfreeze_after=frozen, models_dir=str(models), name=f"lite{lite}",
                    weights=str(WEIGHTS_DIR / f"tf_efficientnet_lite{lite}.safetensors"), workers=0, device="cpu")
    recipe = Recipe(**{**settings, **fields})  # --set may change any of them (bench_demo.py: size, batch, seed)
    work_dir, head_dir = models / f".lite{lite}.partial", out / "head-only"

    def keep_head_only(epoch: int) -> None:
        """After the last frozen epoch the checkpoint holds phase 1's kept weights (its best, or with keep
        last its last): the head-only model, exactly what a run of `frozen` epochs alone would keep (same
        seed, same phase 1)."""
        if epoch == frozen - 1 and unfrozen > 0:
            head_dir.mkdir()
            save_file(checkpoint.load(work_dir)["best_model"], str(head_dir / "model.safetensors"))

    began = time.perf_counter()
    model_dir = finetune(recipe, quiet=True, on_epoch_end=keep_head_only)
    seconds = time.perf_counter() - began
    model, info = load_model(model_dir)
    dataset = LabelledImages(test_root, test_items(test_root, list(info.classes)), info.preprocessing.eval_pixels())
    loader = make_loader(dataset, 64, False, 0)
    probs, labels, _ = evaluate(TorchInference(model, info.preprocessing, torch.device("cpu")), loader, quiet=True)
    history = pd.read_csv(model_dir / "history.csv")
    result = {"classes": list(info.classes), "seconds": seconds, "val_accuracy": list(history.val_accuracy),
              "best_epoch": int(info.raw["best_epoch"]),
              "kept_epoch": int(info.kept_epoch), "lr": list(history.lr), "probs": probs, "labels": labels}
    if head_dir.is_dir():
        shutil.copy(model_dir / "model.json", head_dir / "model.json")  # same backbone, size and classes
        head, _ = load_model(head_dir)
        head_probs, _, _ = evaluate(TorchInference(head, info.preprocessing, torch.device("cpu")), loader, quiet=True)
        np.save(out / "head_test_probs.npy", head_probs)
        phase1 = history.val_accuracy[:frozen]
        result["head_val_accuracy"] = max(phase1) if recipe.keep == "best" else phase1.iloc[-1]
    return result


def run_fastai(lite: int, frozen: int, unfrozen: int, data: Path, test_root: Path, split_csv: Path, out: Path,
               fields: dict) -> dict:
    from fastai.vision.all import (
        Callback,
        CategoryBlock,
        ColReader,
        ColSplitter,
        DataBlock,
        ImageBlock,
        Recorder,
        Resize,
        accuracy,
        aug_transforms,
        vision_learner,
    )

    torch.manual_seed(0)
    split = pd.read_csv(split_csv)
    frame = split[split.subset.isin(["train", "val"])].reset_index(drop=True)
    frame = frame.assign(path=[str(data / p) for p in frame.path], is_valid=frame.subset == "val")
    began = time.perf_counter()
    # fastai's own conventions for a small image set: Resize per item, aug_transforms per batch.
    block = DataBlock(blocks=(ImageBlock, CategoryBlock), get_x=ColReader("path"), get_y=ColReader("label"),
                      splitter=ColSplitter("is_valid"), item_tfms=Resize(SIZE), batch_tfms=aug_transforms())
    dls = block.dataloaders(frame, bs=BATCH, num_workers=0, device="cpu")
    weights = WEIGHTS_DIR / f"tf_efficientnet_lite{lite}.safetensors"
    learn = vision_learner(dls, f"tf_efficientnet_lite{lite}", metrics=accuracy, pretrained=True,
                           pretrained_cfg_overlay=dict(file=str(weights)))  # timm loads the local file
    val: list[float] = []

    class KeepValAccuracy(Callback):  # Recorder.values restarts with each fit, and fine_tune fits twice
        order = Recorder.order + 1

        def after_epoch(self):
            val.append(float(self.learn.recorder.values[-1][2]))

    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(unfrozen, freeze_epochs=frozen, cbs=[KeepValAccuracy()])
    seconds = time.perf_counter() - began
    classes = list(dls.vocab)
    paths = [test_root / p for p, _ in test_items(test_root, classes)]
    test_dl = dls.test_dl(pd.DataFrame({"path": [str(p) for p in paths], "label": [p.parent.name for p in paths],
                                        "is_valid": True}), with_labels=True)
    with learn.no_bar():
        probs, labels = learn.get_preds(dl=test_dl)
    return {"classes": classes, "seconds": seconds, "val_accuracy": val, "best_epoch": len(val),
            "probs": probs.numpy(), "labels": labels.numpy()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=["quorum", "fastai"])
    parser.add_argument("lite", type=int)
    parser.add_argument("frozen", type=int)
    parser.add_argument("unfrozen", type=int)
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="the slice's root (train/, test/)")
    parser.add_argument("--split", type=Path, required=True, help="quorum's split.csv of train/")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON", help="a quorum Recipe field")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    fields = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}
    run = run_quorum if args.system == "quorum" else run_fastai
    result = run(args.lite, args.frozen, args.unfrozen, args.data / "train", args.data / "test", args.split,
                 args.out, fields)
    np.save(args.out / "test_probs.npy", result.pop("probs"))
    np.save(args.out / "test_labels.npy", result.pop("labels"))
    result.update(system=args.system, lite=args.lite, frozen=args.frozen, unfrozen=args.unfrozen, fields=fields,
                  threads=torch.get_num_threads(), load_end=os.getloadavg()[0])
    (args.out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("system", "lite", "frozen", "unfrozen", "seconds", "val_accuracy")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
