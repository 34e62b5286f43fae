"""Images of no known class in the folder: which score flags them, and does the trust line still hold?

    python benchmarks/bench_unknown.py [--jobs 2] [--split-seed N] [--keep-epoch best|last] [--out FILE] [--no-write]

1. Data: the Fashion-MNIST slice of bench_recipe.py (100 train images per class, quorum's 80/20 split,
   a disjoint test set of 2,000) and images of no class from no_class.py (scikit-learn's handwritten
   digits, crops of its two photos, synthetic textures; 650 in all, 24.5% of the folder), all 28x28
   grayscale PNG so that only what they show differs.
2. Members: EfficientNet-Lite0/1/2 (ImageNet weights) at 96 px, 4 frozen + 4 unfrozen epochs, trained as
   bench_recipe.py trains them (recipe_runs.py, one thread each, at most --jobs at a time); reused.
3. The folder through quorum's own predict path (`predict_arrays`, default engine); one temperature per
   member fitted on the validation split (quorum.calibration); ECE before and after, on the in-class rows.
4. Each candidate score on calibrated probabilities, plus energy (the members' logits, from model.onnx)
   and kNN distance in Lite1's penultimate features to the training images (cleanlab's OutOfDistribution):
   AUROC and FPR at 95% of in-class test images kept, per no-class source; and with the threshold set
   on validation as `quorum predict` sets it (--unknown-keep 0.95): in-class kept, no-class flagged.
5. The vote's unanimous rows on the folder, with and without each flag, against the validation trust
   table's unanimous line; and `quorum predict` itself (its score, the kNN distance in every member's
   features, and its printed trust line), in full and with --lazy.
Runs and arrays are kept under benchmarks/data/unknown/ and reused; the section between the
bench_unknown markers of --out is replaced. --keep-epoch last: the members keep their final epoch
(`quorum finetune --keep last`), in unknown[-split<N>]-last/, on the same split.csv and folder as the
best-kept members (paired: the same images and seeds).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import dataclasses
import json
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from common import DATA, ROOT, WEIGHTS, marked, output_args, publish, train_in_process
from fashion_mnist import make_slice
from no_class import SOURCES, make_no_class

RUNS = DATA / "unknown"  # per split seed: unknown/ for seed 0, unknown-split<N>/ for --split-seed N
BEST_RUNS = RUNS  # the best-kept members' folder: its split.csv and folder serve --keep-epoch last too
SPLIT_SEED = 0
KEEP = "best"  # the epoch each member keeps (Recipe.keep); last: runs in <RUNS>-last/
LITES = (0, 1, 2)
COUNTS = {"digits": 250, "photos": 250, "textures": 150}
IN = "in-class"
PRODUCT = "quorum predict's score: kNN distance, members' mean"
KNN_MEMBER = 1  # kNN in one member's features (the brief: "a member's"); a torch pass per image is slow here


def train_members(slice_root: Path, jobs: int, lites: tuple[int, ...] = LITES) -> list[Path]:
    """The members' bundles, trained once on quorum's split of the slice (`make_split`)."""

    def run(lite: int) -> Path:
        out = RUNS / f"lite{lite}"
        if (out / "models" / f"lite{lite}" / "model.json").is_file():  # trained (its test scores may still run)
            return out / "models" / f"lite{lite}"
        weights = json.dumps(str(WEIGHTS / f"tf_efficientnet_lite{lite}.safetensors"))
        train_in_process(["quorum", str(lite), "4", "4", str(out), "--data", str(slice_root), "--split",
                          str(RUNS / "split.csv"), f"--set=weights={weights}", f"--set=keep={json.dumps(KEEP)}"],
                         out, f"{RUNS.name}/lite{lite}")
        return out / "models" / f"lite{lite}"

    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(run, lites))


def make_split(slice_root: Path) -> None:
    """RUNS/split.csv: quorum's 80/20 split of the slice's training images, drawn with SPLIT_SEED (with
    --keep-epoch last: the best-kept runs' own file, copied)."""
    from quorum.data.split import SPLIT_FILE, SPLIT_SETTINGS, load_or_make_split

    RUNS.mkdir(parents=True, exist_ok=True)
    for name in (SPLIT_FILE, SPLIT_SETTINGS):
        if RUNS != BEST_RUNS and not (RUNS / name).is_file():
            shutil.copy(BEST_RUNS / name, RUNS / name)
    load_or_make_split(slice_root / "train", RUNS, val_fraction=0.2, seed=SPLIT_SEED)


def make_folder(slice_root: Path) -> pd.DataFrame:
    """BEST_RUNS/folder: the in-class test images and the no-class ones; path (relative), label, source."""
    folder, sources = BEST_RUNS / "folder", make_no_class(DATA / "no-class", COUNTS)
    if not (folder / ".complete").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(slice_root / "test", folder / IN)
        for source, paths in sources.items():
            shutil.copytree(paths[0].parent, folder / source)
        (folder / ".complete").write_text("ok\n")
    rows = []
    for path in sorted(folder.rglob("*.png")):
        parts = path.relative_to(folder).parts  # in-class/<class>/<n>.png or <source>/<n>.png
        rows.append((path.relative_to(folder).as_posix(), parts[1] if parts[0] == IN else None, parts[0]))
    return pd.DataFrame(rows, columns=["path", "label", "source"]).sort_values("path", ignore_index=True)


def engine_probs(bundle: Path, paths: list[Path]) -> np.ndarray:
    """(images, classes) of one member through quorum predict's own path, on its default engine."""
    import torch

    from quorum.models.inference import Calibrated
    from quorum.predict.members import load_members, member_engines, read_members
    from quorum.predict.pipeline import predict_arrays

    infos = read_members([bundle])
    members = load_members(infos, torch.device("cpu"), member_engines(infos, "auto", "cpu", True), threads=1)
    # Raw: predict calibrates each member (inference.Calibrated); this bench measures before and after itself.
    members = [dataclasses.replace(m, run=m.run.run) if isinstance(m.run, Calibrated) else m for m in members]
    return predict_arrays(paths, members, 0, torch.device("cpu"), workers=0, quiet=True).probs[0]


def onnx_logits(bundle: Path, paths: list[Path]) -> np.ndarray:
    """One member's logits on `paths` from its model.onnx (the graph's output, before predict's softmax),
    fed as predict feeds it: for energy, which probabilities cannot give."""
    import torch

    from quorum.data.images import load_rgb
    from quorum.models.bundle import ONNX, read_info
    from quorum.models.inference import onnx_session

    info = read_info(bundle)
    session = onnx_session(bundle / ONNX, 1)
    crop, normalize = info.preprocessing.eval_pixels(), info.preprocessing.normalizer()
    name = session.get_inputs()[0].name
    with torch.inference_mode():
        return np.concatenate([session.run(None, {name: normalize(torch.stack([crop(load_rgb(p)) for p in
                                                                               paths[start:start + 64]])).numpy()})[0]
                               for start in range(0, len(paths), 64)])


def product_run(bundles: list[Path], frame: pd.DataFrame, lazy: bool = False) -> pd.DataFrame:
    """`quorum predict` itself on the folder (default engine, the default line): its unknown_score, unknown,
    prediction, decided_by and confidence, in `frame`'s order; attrs["unknown"]: the line it drew,
    "unknown_passed": the validation images under it, "vote": its vote (with the vote's temperature)."""
    from quorum.predict.options import PredictOptions
    from quorum.predict.pipeline import predict

    name = "product_lazy" if lazy else "product"
    path, line = RUNS / "arrays" / f"{name}.csv", RUNS / "arrays" / f"{name}.json"
    if not path.is_file() or "unknown_passed" not in json.loads(line.read_text()):  # kept by an older version
        made = predict(BEST_RUNS / "folder", bundles, PredictOptions(workers=0, lazy=lazy), quiet=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        made[["path", "prediction", "decided_by", "confidence", "unknown_score", "unknown"]].to_csv(path, index=False)
        line.write_text(json.dumps({"unknown": made.attrs["unknown"], "vote": made.attrs["vote"],
                                    "unknown_passed": sorted(made.attrs["unknown_passed"])}))
    made = pd.read_csv(path).set_index("path").loc[frame["path"]].reset_index()
    made.attrs.update(json.loads(line.read_text()))
    return made


def product_lines(bundles: list[Path], frame: pd.DataFrame, classes: tuple[str, ...]) -> dict:
    """What a user of `quorum predict` sees: the unanimous rows it does not flag, against the trust line it
    prints (the validation images its line passes, `report.validation_trust.validation_trust`); and --lazy's flags."""
    from quorum.calibration import confidence_calibration_error
    from quorum.report.validation_trust import validation_trust

    full, lazy = product_run(bundles, frame), product_run(bundles, frame, lazy=True)
    right = (full["prediction"] == frame["label"]).to_numpy()  # an image of no class (label None) is never right
    kept = ((full["decided_by"] == "unanimous") & ~full["unknown"].astype(bool)).to_numpy()
    table = validation_trust(bundles, None, frozenset(full.attrs["unknown_passed"])).set_index(["group", "level"])
    line = table.loc[("decided_by", "unanimous")]
    inside = (frame["source"] == IN).to_numpy()
    flags = {"full": full["unknown"].astype(bool).to_numpy(), "lazy": lazy["unknown"].astype(bool).to_numpy()}
    return {"unknown": full.attrs["unknown"], "score": full["unknown_score"].to_numpy(),
            "vote temperature": full.attrs["vote"]["temperature"],
            "ece": confidence_calibration_error(full["confidence"].to_numpy()[inside], right[inside]),
            "rows": int(kept.sum()), "no-class": int((kept & ~inside).sum()), "accuracy": float(right[kept].mean()),
            "expected": float(full["confidence"].to_numpy()[kept].mean()),  # the line's own estimate, by confidence
            "val rows": int(line["images"]), "val accuracy": float(line["accuracy"]),
            "lazy differ": int((flags["full"] != flags["lazy"]).sum()),
            **{f"kept {k}": float((~f)[inside].mean()) for k, f in flags.items()},
            **{f"flagged {k}": float(f[~inside].mean()) for k, f in flags.items()}}


def torch_pass(bundle: Path, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(penultimate features, logits) of one member on `paths`, in torch: for kNN only."""
    import torch

    from quorum.data.images import load_rgb
    from quorum.models.bundle import load_model

    model, info = load_model(bundle)
    crop, normalize = info.preprocessing.eval_pixels(), info.preprocessing.normalizer()
    features, logits = [], []
    with torch.inference_mode():
        for start in range(0, len(paths), 64):
            x = normalize(torch.stack([crop(load_rgb(p)) for p in paths[start:start + 64]]))
            f = model.forward_blocks(x)
            features.append(f.numpy())
            logits.append(model.head(f).numpy())
    return np.concatenate(features), np.concatenate(logits)


def cached(name: str, make):
    """An array (or tuple of arrays) kept in RUNS/arrays/NAME.npz and reused."""
    path = RUNS / "arrays" / f"{name}.npz"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        made = make()
        np.savez(path, *(made if isinstance(made, tuple) else (made,)))
    with np.load(path) as saved:
        arrays = [saved[key] for key in sorted(saved.files, key=lambda k: int(k.split("_")[1]))]
    return tuple(arrays) if len(arrays) > 1 else arrays[0]


def knn_scores(train_features: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """cleanlab's kNN outlier score (mean distance to the k=10 nearest training images, cosine on these
    wide features) turned so that higher = less like the training images."""
    from cleanlab.outlier import OutOfDistribution

    detector = OutOfDistribution()
    detector.fit(features=train_features, verbose=False)
    return [1 - detector.score(features=features) for features in others]


def candidate_scores(probs: np.ndarray, logits: np.ndarray, knn: np.ndarray, tie: int) -> dict[str, np.ndarray]:
    """Every candidate, higher = less like the labelled classes. probs, logits: (members, images, classes);
    knn: (images,), in KNN_MEMBER's features."""
    from scipy.special import logsumexp
    from scipy.stats import entropy

    from quorum.predict.vote import vote

    mean = probs.mean(axis=0)
    agreement = vote(probs, tie).votes / len(probs)
    return {"max probability (baseline)": 1 - mean.max(axis=1),
            "entropy of the mean": entropy(mean, axis=1),
            "energy (logits)": -logsumexp(logits, axis=2).mean(axis=0),
            "disagreement (1 - agreement)": 1 - agreement,
            "mutual information": entropy(mean, axis=1) - entropy(probs, axis=2).mean(axis=0),
            f"kNN distance, Lite{KNN_MEMBER} features": knn}


def detection(score: np.ndarray, val_score: np.ndarray, frame: pd.DataFrame, keep: float = 0.95) -> dict:
    """Per no-class source: AUROC, FPR at `keep` of in-class test images kept (the usual definition) and,
    with the threshold from validation as predict sets it, the in-class share kept and each source's share
    flagged."""
    from sklearn.metrics import roc_auc_score

    inside = (frame["source"] == IN).to_numpy()
    at_test, at_val = np.quantile(score[inside], keep), np.quantile(val_score, keep, method="inverted_cdf")
    result = {"kept in-class (val threshold)": float((score[inside] <= at_val).mean())}
    for source in SOURCES:
        other = (frame["source"] == source).to_numpy()
        both = inside | other
        result[source] = {"auroc": float(roc_auc_score(other[both], score[both])),
                          "fpr95": float((score[other] <= at_test).mean()),
                          "flagged (val threshold)": float((score[other] > at_val).mean())}
    return result


def calibration_rows(raw: np.ndarray, calibrated: np.ndarray, y: np.ndarray, tie: int, val_probs: np.ndarray,
                     val_y: np.ndarray, vote_temperature: float) -> list[dict]:
    """ECE (15 bins) of each member and of the vote's confidence, before and after (the vote: after the
    members' temperatures alone, and after the vote's own too); labels unchanged? And the accuracy on
    validation (where the temperatures were fitted) against the test images'."""
    import torch
    from torchmetrics.functional.classification import binary_calibration_error

    from quorum.calibration import expected_calibration_error
    from quorum.predict.vote import vote

    def vote_ece(probs: np.ndarray, temperature: float = 1.0) -> tuple[float, np.ndarray]:  # confidence: right?
        result = vote(probs, tie, temperature=temperature)
        right = torch.as_tensor(result.label == y, dtype=torch.long)
        return float(binary_calibration_error(torch.as_tensor(result.confidence), right, n_bins=15)), result.label

    rows = [{"who": f"Lite{lite}", "val accuracy": float((val_probs[m].argmax(1) == val_y).mean()),
             "test accuracy": float((raw[m].argmax(1) == y).mean()), "before": expected_calibration_error(raw[m], y),
             "after": expected_calibration_error(calibrated[m], y),
             "same labels": bool((raw[m].argmax(1) == calibrated[m].argmax(1)).all())} for m, lite in enumerate(LITES)]
    (before, labels_before) = vote_ece(raw)
    own = f"vote (confidence), and the vote's own (T {vote_temperature:.3f}): predict's"
    for who, temperature in (("vote (confidence), the members' temperatures only", 1.0), (own, vote_temperature)):
        after, labels_after = vote_ece(calibrated, temperature)
        rows.append({"who": who, "val accuracy": float((vote(val_probs, tie).label == val_y).mean()),
                     "test accuracy": float((labels_before == y).mean()), "before": before, "after": after,
                     "same labels": bool((labels_before == labels_after).all())})
    return rows


def unanimous_lines(probs: np.ndarray, frame: pd.DataFrame, classes: tuple[str, ...], tie: int,
                    flags: dict[str, np.ndarray]) -> dict:
    """The vote's unanimous rows on the folder (an image of no class is never right): all of them, and
    those each score leaves unflagged."""
    from quorum.predict.vote import UNANIMOUS, vote

    index = {name: i for i, name in enumerate(classes)}
    truth = np.array([index.get(label, -1) if isinstance(label, str) else -1 for label in frame["label"]])
    result = vote(probs, tie)
    unanimous = result.decided_by == UNANIMOUS
    right = result.label == truth

    def line(mask: np.ndarray) -> dict:
        return {"rows": int(mask.sum()), "accuracy": float(right[mask].mean()),
                "no-class": int((mask & (truth < 0)).sum())}

    return {"all": line(unanimous), "in-class only": line(unanimous & (truth >= 0)),
            **{name: line(unanimous & ~flag) for name, flag in flags.items()}}


def member_arrays(lite: int, bundle: Path, passes: dict[str, list[Path]]) -> dict:
    """One member's arrays, each made once and kept: its probabilities on the folder through quorum's
    predict path, its logits on val and the folder (ONNX), and for KNN_MEMBER its penultimate features
    on the train, val and folder images (torch)."""
    arrays = {"probs": cached(f"lite{lite}_folder_probs", lambda: engine_probs(bundle, passes["folder"]))}
    for part in ("val", "folder"):
        arrays[f"{part}_logits"] = cached(f"lite{lite}_{part}_logits", lambda p=passes[part]: onnx_logits(bundle, p))
    if lite == KNN_MEMBER:
        for part, paths in passes.items():
            arrays[part] = cached(f"lite{lite}_{part}", lambda p=paths: torch_pass(bundle, p))[0]
    return arrays


def image_lists(slice_root: Path, frame: pd.DataFrame) -> dict[str, list[Path]]:
    split = pd.read_csv(RUNS / "split.csv")
    return {**{part: [slice_root / "train" / p for p in split.loc[split["subset"] == part, "path"]]
               for part in ("train", "val")}, "folder": [BEST_RUNS / "folder" / p for p in frame["path"]]}


def measure(jobs: int, keep: float, only: list[int] | None = None, train_only: list[int] | None = None) -> dict | None:
    from scipy.stats import entropy

    from quorum.calibration import calibrate, fit_temperature
    from quorum.models.bundle import read_val_predictions
    from quorum.predict.members import read_members, tie_breaker_index
    from quorum.predict.trust_table import trust_table
    from quorum.predict.unknown import load_neighbours, validation_scores
    from quorum.predict.validation import read_validation
    from quorum.predict.vote import fit_vote_temperature, vote

    slice_root = make_slice(100, 200).root
    make_split(slice_root)
    frame = make_folder(slice_root)
    passes = image_lists(slice_root, frame)
    if only:  # arrays of members already trained, while the others still train
        for lite in only:
            member_arrays(lite, RUNS / f"lite{lite}" / "models" / f"lite{lite}", passes)
        return None
    if train_only:  # these members alone, e.g. one backbone over every split seed first
        train_members(slice_root, jobs, tuple(train_only))
        return None
    bundles = train_members(slice_root, jobs)
    arrays = [member_arrays(lite, bundle, passes) for lite, bundle in zip(LITES, bundles)]
    probs = np.stack([a["probs"] for a in arrays])
    infos = read_members(bundles)
    tie, classes = tie_breaker_index(infos), infos[0].classes
    # The raw stored validation predictions (report.sources calibrates them), in the torch pass's order.
    wanted = [path.relative_to(slice_root / "train").as_posix() for path in passes["val"]]
    stored = [read_val_predictions(bundle, classes) for bundle in bundles]
    val_probs = np.stack([p[[paths.index(w) for w in wanted]] for paths, _, p in stored])
    val_y = stored[0][1][[stored[0][0].index(w) for w in wanted]]
    temperatures = [fit_temperature(val_probs[m], val_y) for m in range(len(LITES))]
    cal = np.stack([calibrate(probs[m], t) for m, t in enumerate(temperatures)])
    val_cal = np.stack([calibrate(val_probs[m], t) for m, t in enumerate(temperatures)])

    features = arrays[LITES.index(KNN_MEMBER)]
    knn = dict(zip(("val", "folder"), knn_scores(features["train"], features["val"], features["folder"])))
    logits = {part: np.stack([a[f"{part}_logits"] for a in arrays]) for part in ("val", "folder")}
    scores = candidate_scores(cal, logits["folder"], knn["folder"], tie)
    val_scores = candidate_scores(val_cal, logits["val"], knn["val"], tie)
    scores["entropy of the mean, uncalibrated"] = entropy(probs.mean(axis=0), axis=1)
    val_scores["entropy of the mean, uncalibrated"] = entropy(val_probs.mean(axis=0), axis=1)
    scores["max probability, uncalibrated"] = 1 - probs.mean(axis=0).max(axis=1)
    val_scores["max probability, uncalibrated"] = 1 - val_probs.mean(axis=0).max(axis=1)

    product = product_lines(bundles, frame, classes)
    scores[PRODUCT], val_scores[PRODUCT] = product["score"], validation_scores(
        [read_validation(info) for info in infos], load_neighbours(infos)[0])
    inside = (frame["source"] == IN).to_numpy()
    y = np.array([classes.index(label) for label in frame.loc[inside, "label"]])
    flags = {name: scores[name] > np.quantile(val_scores[name], keep, method="inverted_cdf") for name in scores}
    val_unanimous = trust_table(val_y, vote(val_cal, tie)).set_index(["group", "level"]).loc[
        ("decided_by", "unanimous")]
    return {"frame": frame, "temperatures": temperatures, "keep": keep,
            "calibration": calibration_rows(probs[:, inside], cal[:, inside], y, tie, val_probs, val_y,
                                            fit_vote_temperature(val_cal, val_y)),
            "detection": {name: detection(scores[name], val_scores[name], frame, keep) for name in scores},
            "unanimous": unanimous_lines(cal, frame, classes, tie, flags),
            "val_unanimous": {"rows": int(val_unanimous["images"]), "accuracy": float(val_unanimous["accuracy"])},
            "product": product}


def render(m: dict, command: str, minutes: float) -> str:
    frame, keep = m["frame"], m["keep"]
    counts = frame["source"].value_counts()
    others = len(frame) - counts[IN]
    # A section per split and kept epoch.
    marker = "bench_unknown" + (f"-split{SPLIT_SEED}" if SPLIT_SEED else "") + ("-last" if KEEP == "last" else "")
    title = ("Images of no known class" + (f", another split (seed {SPLIT_SEED})" if SPLIT_SEED else "")
             + (", members keeping their last epoch (`--keep last`)" if KEEP == "last" else ""))
    lines = [f"## {title} (`bench_unknown.py`)", "",
             f"`{command}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {minutes:.0f} min (trained members "
             f"and arrays reused from {RUNS.relative_to(ROOT)}/). Folder: {counts[IN]} in-class Fashion-MNIST "
             f"test images and {others} of no class ({others / len(frame):.1%}): "
             + ", ".join(f"{source} {counts[source]}" for source in SOURCES)
             + " (benchmarks/no_class.py; all 28x28 grayscale PNG). Members: EfficientNet-Lite0/1/2, ImageNet "
             f"weights, 96 px, 4+4 epochs (kept: the {KEEP} one), 800 train / 200 val images (bench_recipe.py's "
             f"slice; quorum's split, seed {SPLIT_SEED}).", "",
             "### Calibration (one temperature per member, fitted on the 200 validation images)", "",
             "Temperatures: " + ", ".join(f"Lite{lite} {t:.3f}" for lite, t in zip(LITES, m["temperatures"]))
             + f". ECE (15 bins) on the {counts[IN]} in-class test images:", "",
             "| | val accuracy | test accuracy | ECE before | ECE after | same labels |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['who']} | {r['val accuracy']:.1%} | {r['test accuracy']:.1%} | {r['before']:.3f} | "
              f"{r['after']:.3f} | {'yes' if r['same labels'] else 'no'} |" for r in m["calibration"]]
    lines += ["", f"### Detection: AUROC / FPR at {keep:.0%} of in-class test images kept", "",
              ("Higher score = less like the labelled classes; probability scores on calibrated probabilities. "
              "FPR: the share of a source's images that pass the threshold keeping 95% of in-class test images."), "",
              "| score | " + " | ".join(f"{s} AUROC | {s} FPR" for s in SOURCES) + " |",
              "|---|" + "---|---|" * len(SOURCES)]
    for name, d in m["detection"].items():
        lines.append(f"| {name} | " + " | ".join(f"{d[s]['auroc']:.3f} | {d[s]['fpr95']:.2f}" for s in SOURCES) + " |")
    val = m["val_unanimous"]
    un = m["unanimous"]
    lines += ["", f"### With the threshold set on validation (`--unknown-keep {keep}`), and the trust line", "",
              (f"The validation trust table's unanimous line: {val['accuracy']:.1%} right ({val['rows']} images). "
              f"On the folder, all unanimous rows: {un['all']['rows']}, {un['all']['accuracy']:.1%} right, "
              f"{un['all']['no-class']} of them of no class (an image of no class is never right); the in-class "
              f"rows among them alone (a perfect flag): {un['in-class only']['rows']}, "
              f"{un['in-class only']['accuracy']:.1%} right."), "",
              "| score | in-class kept | " + " | ".join(f"{s} flagged" for s in SOURCES)
              + " | unanimous, not flagged: rows | of no class | right | vs validation |",
              "|---|---|" + "---|" * (len(SOURCES) + 4)]
    for name, d in m["detection"].items():
        u = un[name]
        lines.append(f"| {name} | {d['kept in-class (val threshold)']:.1%} | "
                     + " | ".join(f"{d[s]['flagged (val threshold)']:.1%}" for s in SOURCES)
                     + f" | {u['rows']} | {u['no-class']} | {u['accuracy']:.1%} | "
                     f"{(u['accuracy'] - val['accuracy']) * 100:+.1f} |")
    p = m["product"]
    lines += ["", "### What `quorum predict` prints, and --lazy", "",
              (f"`quorum predict` on the folder (default engine and line, score: {p['unknown']['score']}; line "
               f"{p['unknown']['threshold']:.3f}): unanimous rows not flagged: {p['rows']}, {p['accuracy']:.1%} right, "
               f"{p['no-class']} of no class; its trust line (validation images the line passes, unanimous): "
               f"{p['val accuracy']:.1%} right ({p['val rows']} images), so "
               f"{(p['accuracy'] - p['val accuracy']) * 100:+.1f} points; the same line's folder estimate (the mean "
               f"confidence of those rows): {p['expected']:.1%}, so {(p['accuracy'] - p['expected']) * 100:+.1f} "
               f"points. In-class kept {p['kept full']:.1%}, "
               f"no-class flagged {p['flagged full']:.1%}. With --lazy (each row scored by the members that ran): "
               f"{p['lazy differ']} of {len(frame)} rows flagged differently, in-class kept {p['kept lazy']:.1%}, "
               f"no-class flagged {p['flagged lazy']:.1%}. The ECE of the `confidence` predict wrote, on the "
               f"in-class rows: {p['ece']:.3f} (vote temperature {p['vote temperature']:.3f}).")]
    return marked(marker, lines)


def keep_summary(measured: dict) -> None:
    """RUNS/measured.json: the tables' figures, for keep_report.py's paired best-vs-last comparison."""
    summary = {**{k: v for k, v in measured.items() if k != "frame"},
               "product": {k: v for k, v in measured["product"].items() if k != "score"}}
    (RUNS / "measured.json").write_text(json.dumps(summary, indent=1, default=float))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="training runs at a time, one thread each")
    parser.add_argument("--keep", type=float, default=0.95, help="share of in-class validation images kept")
    output_args(parser)
    parser.add_argument("--arrays-only", type=int, nargs="+", metavar="LITE",
                        help="only make the arrays of these trained members (while the others still train)")
    parser.add_argument("--train-only", type=int, nargs="+", metavar="LITE",
                        help="only train these members (then run again without it to measure)")
    parser.add_argument("--split-seed", type=int, default=0, help="the 80/20 split's seed: another draw of the "
                        "200 validation images (members trained again, under benchmarks/data/unknown-split<N>/)")
    parser.add_argument("--keep-epoch", choices=["best", "last"], default="best",
                        help="the epoch each member keeps (quorum finetune --keep); last: under <runs>-last/")
    args = parser.parse_args()
    global RUNS, BEST_RUNS, SPLIT_SEED, KEEP
    if args.split_seed:
        RUNS, SPLIT_SEED = DATA / f"unknown-split{args.split_seed}", args.split_seed
    BEST_RUNS, KEEP = RUNS, args.keep_epoch
    if KEEP == "last":
        RUNS = RUNS.with_name(f"{RUNS.name}-last")
    import torch

    torch.set_num_threads(1)
    began = time.perf_counter()
    measured = measure(args.jobs, args.keep, args.arrays_only, args.train_only)
    if measured is None:
        return 0
    keep_summary(measured)
    section = render(measured, " ".join(["python benchmarks/bench_unknown.py", *sys.argv[1:]]),
                     (time.perf_counter() - began) / 60)
    publish(section, args.out, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
