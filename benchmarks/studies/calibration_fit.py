"""Why does a member's temperature, fitted on 200 validation images, miss the folder, and would another fit do
better? (issue 19's ECE <= 0.03 on the benchmark)

    python benchmarks/studies/calibration_fit.py [DATA] [--draws 200]   (default DATA: benchmarks/data)

Reads bench_unknown.py's six runs under DATA (unknown[-split1|-split2][-last]: split seeds 0, 1, 2, the members
keeping their best or their last epoch), 3 members each: 18 member x run cases. Nothing is trained and no model
runs: each member's stored raw validation predictions (val_predictions.csv, what finetune fits its temperature
on) and its raw probabilities on the folder (arrays/liteK_folder_probs.npz, made by quorum's predict path). The
ECEs are bench_unknown's: quorum.calibration's (torchmetrics, 15 bins) on the 2,000 in-class rows; the vote's is
its `confidence` with the vote's own temperature, as predict writes it.

1. Diagnosis per case: the temperature fitted on validation (NLL), the one best for the folder's in-class rows
   (oracle, by ECE over a grid, and by NLL), the ECE with each; the ECE's noise floor (a model calibrated
   exactly at the validation temperature: labels drawn from its own probabilities, `--draws` times); the
   validation temperature's spread over `--draws` bootstrap resamples of the 200 images.
2. Fits that use only what finetune has (validation predictions and labels, the members), each judged on all
   18 cases: member ECE <= 0.03 on each, the vote's ECE, and the vote's labels against the raw vote's.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # netcal's fits draw progress bars

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, where the shared modules are
from common import DATA, table  # noqa: E402
from quorum.calibration import (  # noqa: E402
    T_RANGE,
    TINY,
    calibrate,
    confidence_calibration_error,
    expected_calibration_error,
    fit_temperature,
)

RUNS = {(seed, keep): f"unknown{f'-split{seed}' if seed else ''}{'-last' if keep == 'last' else ''}"
        for seed in (0, 1, 2) for keep in ("best", "last")}
LITES = (0, 1, 2)
TARGET = 0.03  # issue 19: each member's and the vote's ECE on the benchmark
GRID = np.exp(np.linspace(np.log(0.4), np.log(1.6), 241))  # temperatures tried for the folder's oracle


@dataclass
class Case:
    """One run: its members' raw probabilities on validation (members, 200, classes) and on the folder's
    in-class rows (members, 2000, classes), the true labels of both, and the vote's tie-breaker."""
    name: str
    val: np.ndarray
    val_y: np.ndarray
    folder: np.ndarray
    y: np.ndarray
    tie: int


def load_case(data: Path, seed: int, keep: str) -> Case:
    from quorum.models.bundle import read_val_predictions
    from quorum.predict.members import read_members, tie_breaker_index

    runs = data / RUNS[(seed, keep)]
    bundles = [runs / f"lite{lite}" / "models" / f"lite{lite}" for lite in LITES]
    infos = read_members(bundles)
    classes = infos[0].classes
    stored = [read_val_predictions(bundle, classes) for bundle in bundles]
    order = stored[0][0]  # every member's rows in the first member's order
    val = np.stack([probs[[paths.index(p) for p in order]] for paths, _, probs in stored])
    # bench_unknown's folder frame: the best-kept run's folder, paths sorted; in-class/<class>/<n>.png first
    folder_root = data / RUNS[(seed, "best")] / "folder"
    paths = sorted(p.relative_to(folder_root).as_posix() for p in folder_root.rglob("*.png"))
    inside = np.array([p.startswith("in-class/") for p in paths])
    y = np.array([classes.index(p.split("/")[1]) for p in np.array(paths)[inside]])
    folder = np.stack([np.load(runs / "arrays" / f"lite{lite}_folder_probs.npz")["arr_0"][inside] for lite in LITES])
    return Case(f"seed {seed}, {keep}", val, stored[0][1], folder, y, tie_breaker_index(infos))


# Fits: each takes (members, images, classes) validation probabilities and labels, returns one temperature each.

def fit_nll(val: np.ndarray, y: np.ndarray) -> np.ndarray:
    """quorum's: each member's own NLL-minimising temperature."""
    return np.array([fit_temperature(p, y) for p in val])


def _fit_scalar(loss) -> float:
    result = minimize_scalar(loss, bounds=tuple(np.log(T_RANGE)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def fit_brier(val: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each member's Brier-score-minimising temperature (a proper score, less driven by the rare confident
    mistakes than NLL)."""
    def one(p: np.ndarray) -> float:
        onehot = np.eye(p.shape[1])[y]
        return _fit_scalar(lambda log_t: float(((calibrate(p, np.exp(log_t)) - onehot) ** 2).sum(1).mean()))
    return np.array([one(p) for p in val])


def smooth_ece(probs: np.ndarray, y: np.ndarray, bandwidth: float = 0.05) -> float:
    """A kernel-smoothed ECE (Nadaraya-Watson estimate of accuracy given confidence, Gaussian kernel): the
    15-bin ECE is a step function of T on 200 images, this one is smooth enough to minimise."""
    confidence, right = probs.max(1), (probs.argmax(1) == y).astype(float)
    weights = np.exp(-0.5 * ((confidence[:, None] - confidence[None, :]) / bandwidth) ** 2)
    return float(np.abs(weights @ (right - confidence) / weights.sum(1)).mean())


def fit_smooth_ece(val: np.ndarray, y: np.ndarray) -> np.ndarray:
    # The smoothed ECE is not convex in T: the best of a grid, then nothing finer (the grid step is 0.5%).
    return np.array([GRID[np.argmin([smooth_ece(calibrate(p, t), y) for t in GRID])] for p in val])


def bootstrap_temperatures(val: np.ndarray, y: np.ndarray, draws: int, seed: int = 0) -> np.ndarray:
    """(draws, members): each member's NLL temperature on `draws` resamples (with replacement) of the images,
    the same resample for every member (they share the validation split)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(y), size=(draws, len(y)))
    return np.array([fit_nll(val[:, pick], y[pick]) for pick in picks])


def fit_bagged(val: np.ndarray, y: np.ndarray, draws: int = 50) -> np.ndarray:
    """The geometric mean of the NLL temperature over bootstrap resamples (bagging)."""
    return np.exp(np.log(bootstrap_temperatures(val, y, draws, seed=1)).mean(0))


def fit_bias_corrected(val: np.ndarray, y: np.ndarray, draws: int = 50) -> np.ndarray:
    """The NLL temperature less its bootstrap bias (in log T: 2 log T - the resamples' mean log T)."""
    return np.exp(2 * np.log(fit_nll(val, y)) - np.log(bootstrap_temperatures(val, y, draws, seed=1)).mean(0))


def fit_pooled(val: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One temperature for every member, fitted on their validation predictions stacked."""
    shared = fit_temperature(val.reshape(-1, val.shape[2]), np.tile(y, len(val)))
    return np.full(len(val), shared)


def fit_shrunk(val: np.ndarray, y: np.ndarray, draws: int = 50) -> np.ndarray:
    """Each member's log T shrunk toward the members' mean by empirical Bayes: by the share of the spread
    between members that the bootstrap noise of each does not explain."""
    own = np.log(fit_nll(val, y))
    noise = np.log(bootstrap_temperatures(val, y, draws, seed=1)).var(0)
    between = max(own.var(ddof=1) - noise.mean(), 0.0)
    keep = between / (between + noise)
    return np.exp(own.mean() + keep * (own - own.mean()))


def fit_half_shrunk(val: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each member's log T halfway to the members' mean."""
    own = np.log(fit_nll(val, y))
    return np.exp((own + own.mean()) / 2)


def _netcal_temperature(method: str):
    def fit(val: np.ndarray, y: np.ndarray) -> np.ndarray:
        import torch
        from netcal.scaling import TemperatureScaling

        out = []
        for p in val:
            torch.manual_seed(0)
            scaler = TemperatureScaling(method=method)
            scaler.fit(np.clip(p, TINY, 1.0), y, random_state=0, tensorboard=False)
            # netcal scales the logits by a weight, 1/T: the MLE's, or the mean of its posterior's
            weight = scaler.weights if method == "mle" else scaler.vi_model["params"]["weights_mean"].detach().numpy()
            out.append(1.0 / float(np.mean(weight)))
        return np.array(out)
    return fit


METHODS = {"NLL (quorum's)": fit_nll, "Brier": fit_brier, "smoothed ECE": fit_smooth_ece,
           "bagged NLL (50 resamples)": fit_bagged,
           "NLL less its bootstrap bias": fit_bias_corrected, "pooled: one T for all members": fit_pooled,
           "shrunk to the members' mean (empirical Bayes)": fit_shrunk, "shrunk halfway": fit_half_shrunk,
           "netcal TemperatureScaling (mle)": _netcal_temperature("mle"),
           "netcal TemperatureScaling (variational)": _netcal_temperature("variational")}


def judge(case: Case, temperatures: np.ndarray) -> dict:
    """Member ECEs on the folder with these temperatures; the vote as predict makes it (its own temperature
    fitted on the calibrated validation vote), its ECE, and how many of its labels differ from the raw vote's."""
    from quorum.predict.vote import fit_vote_temperature, vote

    folder = np.stack([calibrate(p, t) for p, t in zip(case.folder, temperatures)])
    val = np.stack([calibrate(p, t) for p, t in zip(case.val, temperatures)])
    voted = vote(folder, case.tie, temperature=fit_vote_temperature(val, case.val_y))
    return {"members": [expected_calibration_error(p, case.y) for p in folder],
            "vote": confidence_calibration_error(voted.confidence, voted.label == case.y),
            "labels changed": int((voted.label != vote(case.folder, case.tie).label).sum())}


def oracle(probs: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The grid temperature with the lowest ECE on these rows, and that ECE (for diagnosis only)."""
    eces = [expected_calibration_error(calibrate(probs, t), y) for t in GRID]
    return float(GRID[int(np.argmin(eces))]), float(min(eces))


def noise_floor(probs: np.ndarray, draws: int, seed: int = 0) -> np.ndarray:
    """ECEs of a model calibrated exactly by construction: each row right with its own top probability."""
    rng = np.random.default_rng(seed)
    confidence = probs.max(1)
    return np.array([confidence_calibration_error(confidence, rng.random(len(confidence)) < confidence)
                     for _ in range(draws)])


def diagnose(case: Case, draws: int) -> list[list[str]]:
    rows = []
    fitted = fit_nll(case.val, case.val_y)
    boot = bootstrap_temperatures(case.val, case.val_y, draws)
    for m, lite in enumerate(LITES):
        val_acc = (case.val[m].argmax(1) == case.val_y).mean()
        test_acc = (case.folder[m].argmax(1) == case.y).mean()
        at_val = calibrate(case.folder[m], fitted[m])
        best_t, best_ece = oracle(case.folder[m], case.y)
        floor = noise_floor(at_val, draws)
        nll_t = fit_temperature(case.folder[m], case.y)
        lo, hi = np.quantile(boot[:, m], [0.05, 0.95])
        boot_eces = [expected_calibration_error(calibrate(case.folder[m], t), case.y) for t in boot[:, m]]
        rows.append([case.name, f"Lite{lite}", f"{val_acc:.1%} / {test_acc:.1%}", f"{fitted[m]:.3f}",
                     f"{lo:.3f}-{hi:.3f}", f"{(boot[:, m] < best_t).mean():.0%}",
                     f"{best_t:.3f}", f"{nll_t:.3f}", f"{expected_calibration_error(at_val, case.y):.3f}",
                     f"{best_ece:.3f}", f"{expected_calibration_error(calibrate(case.folder[m], nll_t), case.y):.3f}",
                     f"{floor.mean():.3f} ({np.quantile(floor, 0.95):.3f})",
                     f"{np.mean(np.array(boot_eces) <= TARGET):.0%}"])
    return rows


def redrawn(case: Case, fit, draws: int, size: int = 200, judged: int | None = None, seed: int = 0) -> dict:
    """Another validation split, `draws` times: `size` of the folder's in-class rows drawn as validation (the fit
    sees only them), the rest judged (or the last `judged` of the shuffled rows, the same for every `size`). The
    same draws for every fit (paired); fit None: the oracle. Each draw's temperatures are also given relative to
    the folder's own NLL temperature."""
    rng = np.random.default_rng(seed)
    folder_t = fit_nll(case.folder, case.y)
    members, votes, ratios = [], [], []
    for _ in range(draws):
        order = rng.permutation(len(case.y))
        val, rest = order[:size], order[size:] if judged is None else order[-judged:]
        drawn = Case(case.name, case.folder[:, val], case.y[val], case.folder[:, rest], case.y[rest], case.tie)
        # fit None: the judged rows' own NLL temperature, the best a fit on validation could hope for
        temperatures = fit_nll(drawn.folder, drawn.y) if fit is None else fit(drawn.val, drawn.val_y)
        judged_here = judge(drawn, temperatures)
        members.append(judged_here["members"])
        votes.append(judged_here["vote"])
        ratios.append(temperatures / folder_t)
    return {"members": np.array(members), "vote": np.array(votes), "ratios": np.array(ratios)}


def diagnosis_section(cases: list[Case], draws: int) -> list[str]:
    header = ["run", "member", "val / folder accuracy", "T val (NLL)", "T val, bootstrap 5-95%",
              "bootstrap T < oracle T", "T oracle (folder ECE)", "T oracle (folder NLL)", "ECE at T val",
              "ECE at T oracle", "ECE at T oracle (NLL)", "ECE noise floor: mean (95%)", "bootstrap T with ECE <= 0.03"]
    return ["## 1. Diagnosis: per member, the NLL temperature fitted on validation against the folder's", "",
            *table(header, [row for case in cases for row in diagnose(case, draws)])]


def fits_section(cases: list[Case], methods: list[str]) -> list[str]:
    lines = ["## 2. Fits on validation only, judged on every case (member ECE / vote ECE on the folder)", ""]
    summary = []
    for name in methods:
        results = [(case, t, judge(case, t)) for case, t in ((c, METHODS[name](c.val, c.val_y)) for c in cases)]
        rows = [[case.name, " / ".join(f"{x:.3f}" for x in t), " / ".join(f"{e:.3f}" for e in r["members"]),
                 f"{r['vote']:.3f}", str(r["labels changed"])] for case, t, r in results]
        lines += [f"### {name}", "", *table(["run", "T Lite0 / 1 / 2", "ECE Lite0 / 1 / 2", "vote ECE",
                                             "vote labels changed"], rows)]
        summary.append((name, np.array([r["members"] for _, _, r in results]),
                        np.array([r["vote"] for _, _, r in results]), sum(r["labels changed"] for _, _, r in results)))
    base = summary[0][1].round(3)  # better / worse: by the ECE as printed
    rows = [[name, f"{(m <= TARGET).sum()} / {m.size}", f"{m.max():.3f}", f"{m.mean():.3f}",
             f"{(m.round(3) < base).sum()} / {(m.round(3) > base).sum()}", f"{(v <= TARGET).sum()} / {v.size}",
             f"{v.max():.3f}", str(changed)] for name, m, v, changed in summary]
    return lines + [f"## Summary over the 18 member cases and 6 votes (against {methods[0]})", "",
                    *table(["fit", "members ECE <= 0.03", "worst member", "mean member", "better / worse",
                            "votes ECE <= 0.03", "worst vote", "vote labels changed"], rows)]


def redrawn_section(cases: list[Case], methods: list[str], draws: int) -> list[str]:
    rows = []
    # netcal's mle is quorum's fit to 3 decimals (section 2), its variational fit is slow and far off there
    fits = {name: METHODS[name] for name in methods if not name.startswith("netcal")}
    for name, fit in {**fits, "oracle: the judged rows' own NLL temperature": None}.items():
        runs = [redrawn(case, fit, draws) for case in cases]
        members = np.concatenate([r["members"].ravel() for r in runs])
        votes = np.concatenate([r["vote"] for r in runs])
        rows.append([name, f"{(members <= TARGET).mean():.0%}", f"{members.mean():.3f}",
                     f"{np.quantile(members, 0.9):.3f}", f"{(votes <= TARGET).mean():.0%}", f"{votes.mean():.3f}",
                     f"{np.quantile(votes, 0.9):.3f}"])
    return [f"## 3. Another validation split: 200 of the folder's in-class rows drawn as validation, {draws} times "
            "per run (the same draws for every fit), the other 1,800 judged", "",
            *table(["fit", "member ECE <= 0.03", "member ECE mean", "member ECE 90th pct.", "vote ECE <= 0.03",
                    "vote ECE mean", "vote ECE 90th pct."], rows)]


def sizes_section(cases: list[Case], draws: int) -> list[str]:
    rows = []
    for size in (100, 200, 400, 1000, "oracle"):
        oracle_row = size == "oracle"
        runs = [redrawn(case, None if oracle_row else fit_nll, draws, 200 if oracle_row else size, judged=1000)
                for case in cases]
        members = np.concatenate([r["members"].ravel() for r in runs])
        ratios = np.concatenate([r["ratios"].ravel() for r in runs])
        votes = np.concatenate([r["vote"] for r in runs])
        low, high = np.quantile(ratios, [0.05, 0.95])
        rows.append([str(size), f"{low:.2f}-{high:.2f}", f"{(members <= TARGET).mean():.0%}", f"{members.mean():.3f}",
                     f"{np.quantile(members, 0.9):.3f}", f"{(votes <= TARGET).mean():.0%}"])
    return ["## 4. quorum's fit (NLL) with more validation images: drawn from one half of the folder's in-class "
            "rows, the other half (1,000) judged; oracle: the judged rows' own NLL temperature", "",
            *table(["validation images", "T / folder's NLL T, 5-95%", "member ECE <= 0.03", "member ECE mean",
                    "member ECE 90th pct.", "vote ECE <= 0.03"], rows)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=DATA, help="where bench_unknown.py's runs are")
    parser.add_argument("--draws", type=int, default=200, help="bootstrap resamples and noise-floor draws")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="a subset of the fits, by name")
    parser.add_argument("--redraws", type=int, default=200, help="validation splits redrawn from the folder per run")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    cases = [load_case(args.data, seed, keep) for seed in (0, 1, 2) for keep in ("best", "last")]
    distinct = [case for case in cases if case.name != "seed 2, last"]  # its members are seed 2 best's
    sections = (lambda: diagnosis_section(cases, args.draws), lambda: fits_section(cases, args.methods),
                lambda: redrawn_section(distinct, args.methods, args.redraws),
                lambda: sizes_section(distinct, args.redraws))
    for section in sections:  # each printed as soon as it is measured
        print("\n".join(section()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
