"""Calibration on held-out real images: each member's and the vote's ECE before and after the temperatures
`quorum finetune` fits on validation, and whether any label changed.

    python benchmarks/bench_calibration.py [--lites 0 1 2] [--out FILE] [--no-write]

1. A Fashion-MNIST slice (benchmarks/fashion_mnist.py): 100 train images per class, which quorum splits
   80/20 into train/val once, and a disjoint test set of 200 per class (2,000).
2. EfficientNet-Lite0/1/2 with the ImageNet weights in ../shared/weights, each `quorum finetune` 4+4 epochs
   at 96 px, one thread, under nice, into benchmarks/data/calibration/models (a finished model is reused).
   finetune fits each member's temperature on the 200 validation images and stores it in model.json.
3. Raw test probabilities: each network in torch with no temperature (TorchInference, as validation runs).
4. `quorum predict test/ --probs` (the library call) on each engine: the probabilities quorum writes.
5. ECE (15 bins): each member's raw probabilities against its `<member>_confidence` column, and the vote of
   the raw probabilities (quorum's rule) against the CSV's `confidence`; labels compared row by row.
The report replaces only its own section of --out (between the bench_calibration markers).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads: the machine is shared

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common import DATA, finetune_lite, marked, output_args, publish
from fashion_mnist import make_slice

MODELS = DATA / "calibration" / "models"


def raw_test_probs(model_dir: Path, test: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(probabilities with no temperature, true class indices, paths relative to `test`)."""
    from quorum.data.datasets import LabelledImages, make_loader
    from quorum.models.bundle import load_model
    from quorum.models.inference import TorchInference
    from quorum.train.loop import evaluate

    model, info = load_model(model_dir)
    items = [(p.relative_to(test).as_posix(), info.classes.index(p.parent.name)) for p in sorted(test.glob("*/*.png"))]
    loader = make_loader(LabelledImages(test, items, info.preprocessing.eval_pixels()), 64, False, 0)
    probs, labels, positions = evaluate(TorchInference(model, info.preprocessing, torch.device("cpu")), loader,
                                        quiet=True)
    return probs, labels, [items[i][0] for i in positions]


def measure(model_dirs: list[Path], test: Path, engines: list[str]) -> dict:
    from quorum.calibration import (
        calibrate,
        confidence_calibration_error,
        expected_calibration_error,
        fit_temperature,
    )
    from quorum.models.bundle import read_info
    from quorum.predict.members import tie_breaker_index
    from quorum.predict.options import PredictOptions
    from quorum.predict.pipeline import predict
    from quorum.predict.vote import vote

    infos = [read_info(d) for d in model_dirs]
    names, classes = [info.path.name for info in infos], infos[0].classes
    raws = [raw_test_probs(d, test) for d in model_dirs]
    paths, y = raws[0][2], raws[0][1]
    assert all(r[2] == paths for r in raws)
    raw = np.stack([r[0] for r in raws])
    before = vote(raw, tie_breaker_index(infos))
    result = {"members": {}, "vote": {}, "images": len(y)}
    for info, probs in zip(infos, raw):
        block = info.raw["calibration"]
        result["members"][info.path.name] = {"temperature": block["temperature"], "val_ece_before": block["ece_before"],
                                        "val_ece_after": block["ece_after"], "val_images": block["images"],
                                        "accuracy": float((probs.argmax(1) == y).mean()),
                                        "ece_before": expected_calibration_error(probs, y)}
    # The floor: a temperature fitted on the test images themselves (what 200 validation images can at best
    # approach), to tell the method's error from the validation split's.
    oracle = np.stack([calibrate(probs, fit_temperature(probs, y)) for probs in raw])
    for name, probs, best in zip(names, raw, oracle):
        result["members"][name].update(test_temperature=fit_temperature(probs, y),
                                       ece_test_fitted=expected_calibration_error(best, y))
    best = vote(oracle, tie_breaker_index(infos))
    result["vote"] = {"accuracy": float((before.label == y).mean()),
                      "ece_before": confidence_calibration_error(before.confidence, before.label == y),
                      "ece_test_fitted": confidence_calibration_error(best.confidence, best.label == y)}
    for engine in engines:
        began = time.perf_counter()
        frame = predict(test, model_dirs, PredictOptions(engine=engine, probs=True, workers=0),
                        quiet=True).set_index("path").loc[paths]
        seconds = time.perf_counter() - began
        truth = np.array(classes)[y]
        for m, name in enumerate(names):
            said = frame[f"{name}_prediction"].to_numpy()
            member = result["members"][name]
            member[f"ece_after_{engine}"] = confidence_calibration_error(frame[f"{name}_confidence"], said == truth)
            member[f"labels_changed_{engine}"] = int((said != np.array(classes)[raw[m].argmax(1)]).sum())
        voted = frame["prediction"].to_numpy()
        result["vote"][f"ece_after_{engine}"] = confidence_calibration_error(frame["confidence"], voted == truth)
        result["vote"][f"labels_changed_{engine}"] = int((voted != np.array(classes)[before.label]).sum())
        result["vote"][f"predict_seconds_{engine}"] = seconds
    return result


def render(result: dict, engines: list[str], command: str) -> str:
    e0 = engines[0]
    lines = ["## Calibration: ECE before and after the temperatures", "",
             f"`{command}`, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC. Data: 100 Fashion-MNIST train images "
             "per class, quorum's 80/20 split (800 train, 200 val); EfficientNet-Lite0/1/2 with the ImageNet weights "
             "of ../shared/weights, `quorum finetune` 4+4 epochs at 96 px, batch 32, one thread each. Each member's "
             f"temperature is the one finetune fitted on the 200 validation images (model.json). Test: "
             f"{result['images']:,} disjoint Fashion-MNIST test images. ECE: 15 equal-width bins (torchmetrics), of "
             "each member's top probability and of the vote's `confidence`; *before* = the network's own softmax, "
             f"*after* = the column `quorum predict --probs` wrote ({', '.join(engines)} engine). Labels changed: rows "
             "whose label differs from the one the raw probabilities give. Last column, for reference only: the ECE "
             "had the temperatures been fitted on the test images themselves (the floor a validation fit can "
             "approach).", "",
             "| | temperature (val) | val ECE before -> after | test accuracy | test ECE before | test ECE after | "
             "labels changed | test ECE, T fitted on test |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in result["members"].items():
        after = " / ".join(f"{m[f'ece_after_{e}']:.3f}" for e in engines)
        changed = " / ".join(str(m[f"labels_changed_{e}"]) for e in engines)
        lines.append(f"| {name} | {m['temperature']:.3f} | {m['val_ece_before']:.3f} -> {m['val_ece_after']:.3f} | "
                     f"{m['accuracy']:.1%} | {m['ece_before']:.3f} | {after} | {changed} | "
                     f"{m['ece_test_fitted']:.3f} (T {m['test_temperature']:.3f}) |")
    v = result["vote"]
    after = " / ".join(f"{v[f'ece_after_{e}']:.3f}" for e in engines)
    changed = " / ".join(str(v[f"labels_changed_{e}"]) for e in engines)
    lines += [f"| vote (`confidence`) | - | - | {v['accuracy']:.1%} | {v['ece_before']:.3f} | {after} | {changed} | "
              f"{v['ece_test_fitted']:.3f} |", "",
              f"Where two numbers are given they are for the {' and '.join(engines)} engines. "
              f"`quorum predict` on the 2,000 images took {v[f'predict_seconds_{e0}']:.0f} s ({e0}) on a shared, "
              f"busy machine (load average {os.getloadavg()[0]:.1f} at the end)."]
    return marked("bench_calibration", lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lites", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--engines", nargs="+", default=["torch", "onnx"])
    output_args(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = make_slice(100, 200)
    model_dirs = [finetune_lite(MODELS, f"lite{lite}", lite, data.train) for lite in args.lites]
    result = measure(model_dirs, data.test, args.engines)
    (DATA / "calibration" / "result.json").write_text(json.dumps(result, indent=1))
    command = "python benchmarks/bench_calibration.py" + " ".join([""] + sys.argv[1:])
    section = render(result, args.engines, command)
    publish(section, args.out, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
