"""The report's pictures, as matplotlib Figures (saving them is the caller's job).

Figures are built with `matplotlib.figure.Figure`, not pyplot: no global state, no GUI backend,
nothing to close, so they work the same headless, in tests and in threads (Agg renders them).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

PANEL_COLUMNS = 4  # confusion matrices per row


def _normalised(matrix) -> np.ndarray:
    """Rows as shares of each true class, so classes of any size read on one scale."""
    counts = np.asarray(matrix, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def _matrix_panel(ax, values: np.ndarray, counts: np.ndarray, classes, title: str, cmap: str, vmin: float,
                  vmax: float, labels: list[str], show_y: bool):
    image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax)
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=90, fontsize=8)
    ax.set_yticks(ticks, classes if show_y else [""] * len(classes), fontsize=8)
    ax.set_xlabel("predicted")
    if show_y:
        ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    for (i, j), text in np.ndenumerate(np.asarray(labels, dtype=object).reshape(counts.shape)):
        if text:  # black or white, whichever the cell's own colour makes readable (a count of 1 on pale blue too)
            cell = image.cmap(image.norm(values[i, j])) if np.isfinite(values[i, j]) else (1.0, 1.0, 1.0)
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=_ink(cell))
    return image


def _ink(background) -> str:
    """Black on light colours, white on dark ones: WCAG relative luminance against the midpoint
    where both inks give the same contrast."""
    channels = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in background[:3]]
    luminance = 0.2126 * channels[0] + 0.7152 * channels[1] + 0.0722 * channels[2]
    return "black" if luminance > 0.179 else "white"


def _panel_size(classes) -> float:
    return 1.6 + 0.38 * len(classes)


def confusion_matrices(matrices: dict[str, list], classes) -> Figure:
    """Every matrix side by side, rows normalised, one colour scale (0 to 1), counts written in the cells."""
    n = len(matrices)
    cols, rows = min(n, PANEL_COLUMNS), -(-n // PANEL_COLUMNS)
    side = _panel_size(classes)
    fig = Figure(figsize=(side * cols + 1.2, side * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    for k, (ax, (name, matrix)) in enumerate(zip(axes, matrices.items())):
        counts = np.asarray(matrix)
        image = _matrix_panel(ax, _normalised(counts), counts, classes, name, "Blues", 0.0, 1.0,
                              [str(c) if c else "" for c in counts.ravel()], show_y=k % cols == 0)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.colorbar(image, ax=list(axes[:n]), shrink=0.8, label="share of the true class")
    return fig


def best_vs_ensemble(best: str, best_matrix, ensemble_matrix, classes) -> Figure:
    """The best single model, the ensemble, and ensemble minus best: green where the vote does better."""
    best_counts, ens_counts = np.asarray(best_matrix), np.asarray(ensemble_matrix)
    side = _panel_size(classes)
    fig = Figure(figsize=(side * 3 + 1.6, side + 0.6), layout="constrained")
    axes = fig.subplots(1, 3)
    for k, (ax, name, counts) in enumerate(zip(axes[:2], (best, "ensemble"), (best_counts, ens_counts))):
        image = _matrix_panel(ax, _normalised(counts), counts, classes, name, "Blues", 0.0, 1.0,
                              [str(c) if c else "" for c in counts.ravel()], show_y=k == 0)
    fig.colorbar(image, ax=list(axes[:2]), shrink=0.8, label="share of the true class")
    change = _normalised(ens_counts) - _normalised(best_counts)
    better = np.where(np.eye(len(classes), dtype=bool), change, -change)  # more on the diagonal, less off it
    better[(change == 0)] = np.nan  # unchanged cells stay blank
    limit = max(float(np.nanmax(np.abs(better), initial=0.0)), 0.05)
    diff = ens_counts - best_counts
    title = f"ensemble - {best}" + ("" if diff.any() else ": no difference")
    diff_image = _matrix_panel(axes[2], better, diff, classes, title, "RdYlGn", -limit, limit,
                               [f"{d:+d}" if d else "" for d in diff.ravel()], show_y=True)
    fig.colorbar(diff_image, ax=axes[2], shrink=0.8, label="change in share (green: the vote is better)")
    return fig


def training_curves(histories: dict[str, pd.DataFrame], kept: dict[str, int] | None = None) -> Figure:
    """Loss and accuracy per epoch, train and val, per model; a dashed line where the backbone unfroze,
    a star on the epoch each model kept (`kept`: model.json's kept_epoch, by name)."""
    fig = Figure(figsize=(11, 3.0 * len(histories) + 0.4), layout="constrained")
    axes = fig.subplots(len(histories), 2, squeeze=False)
    for (loss_ax, acc_ax), (name, history) in zip(axes, histories.items()):
        epochs = history["epoch"]
        for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
            ax.plot(epochs, history[f"train_{metric}"], "o-", ms=3, label="train")
            ax.plot(epochs, history[f"val_{metric}"], "o-", ms=3, label="val")
            ax.set_title(f"{name}: {metric}", fontsize=10)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if epochs.nunique() == 1:  # one epoch: the locator would fall back to fractions around it
                ax.set_xticks(list(epochs))
            ax.grid(alpha=0.3)
            unfrozen = history.loc[history["phase"] == 2, "epoch"] if "phase" in history else []
            if len(unfrozen) and unfrozen.iloc[0] > epochs.iloc[0]:  # a run that never froze has no line
                ax.axvline(unfrozen.iloc[0] - 0.5, color="grey", ls="--", label="unfrozen")
        _clip_spikes(loss_ax, epochs, history[["train_loss", "val_loss"]])
        loss_ax.legend(fontsize=8, loc="upper right")
        acc_ax.set_ylim(0, 1.02)
        acc_ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        best = history.index[epochs == (kept or {}).get(name)]  # training broke accuracy ties by loss: its word
        if len(best):
            acc_ax.plot(epochs[best], history["val_accuracy"][best], "*", ms=12, color="tab:red", label="kept epoch")
        acc_ax.legend(fontsize=8, loc="lower right")
    return fig


def _clip_spikes(ax, epochs: pd.Series, losses: pd.DataFrame, factor: float = 10.0) -> None:
    """Scale the loss axis to the losses within `factor` times their median, and write the value of any
    higher one at the top edge: one early spike (a validation loss of 22.7) must not flatten the curves."""
    values = losses.to_numpy(float)
    finite = values[np.isfinite(values)]
    if not len(finite):
        return
    ceiling = factor * max(float(np.median(finite)), 1e-12)
    spikes = finite > ceiling
    if not spikes.any():
        return
    top = float(finite[~spikes].max()) * 1.15 if (~spikes).any() else ceiling
    ax.set_ylim(min(0.0, float(finite.min())), top)
    for column in losses:
        for epoch, value in zip(epochs, losses[column]):
            if np.isfinite(value) and value > ceiling:
                ax.annotate(f"{value:.3g} \u2191", (epoch, top), xytext=(0, -10), textcoords="offset points",
                            ha="center", fontsize=7, color="tab:red")


KIND_COLOURS = {"member": "tab:blue", "student": "tab:purple", "vote": "tab:red"}


def accuracy_vs_time(table: pd.DataFrame, ensemble_name: str) -> Figure:
    """Each model (and the ensemble) by measured time per image and accuracy; dot area follows parameters,
    colour the kind (member, student, vote; the ensemble is red without one), a square an int8 graph, and
    each label names the engine."""
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.subplots()
    params = table["parameters"].astype(float)
    params = params.fillna(params.median()).fillna(1.0)  # no count at all (older bundles): one size for every dot
    area = 60 + 900 * params / params.max()
    kinds = table["kind"] if "kind" in table else pd.Series("member", index=table.index)
    kinds = kinds.where(table["model"] != ensemble_name, "vote").fillna("member")
    engines = table["engine"] if "engine" in table else pd.Series(None, index=table.index, dtype=object)
    int8 = engines == "int8"
    for kind, colour in KIND_COLOURS.items():
        for square in (False, True):
            shown = (kinds == kind) & (int8 == square)
            if shown.any():
                ax.scatter(table["ms_per_image"][shown], table["accuracy"][shown], s=area[shown], c=colour,
                           marker="s" if square else "o", alpha=0.6, edgecolors="black",
                           label=kind + (", int8" if square else ""))
    rows = zip(table["model"], table["ms_per_image"], table["accuracy"], table["parameters"], engines)
    for k, (name, x, y, p, engine) in enumerate(rows):
        details = [part for part in (engine if pd.notna(engine) else None,
                                     f"{p / 1e6:.1f} M params" if pd.notna(p) else None) if part]
        label = "\n".join([name, ", ".join(details)]) if details else name
        # Alternate above and below, so neighbours with equal accuracy do not print over each other.
        ax.annotate(label, (x, y), xytext=(8, 8 if k % 2 == 0 else -22), textcoords="offset points", fontsize=8)
    if kinds.nunique() > 1 or int8.any():
        ax.legend(fontsize=8, loc="lower right", markerscale=0.5)
    ax.set_xscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_major_formatter(plain)
    # Between the decades, only 2 and 5 are labelled: all eight minor labels of a decade overlap.
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: (f"{value:g}" if _leading_digit(value) in (2, 5)
                                                                 else "")))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("time per image on this machine (ms, log scale)")
    ax.set_ylabel("accuracy")
    ax.margins(x=0.3, y=0.15)
    ax.grid(alpha=0.3)
    ax.set_title("accuracy against time per image (dot size: parameters; square: int8)", fontsize=10)
    return fig


def _leading_digit(value: float) -> int:
    return int(round(value / 10 ** np.floor(np.log10(value)))) if value > 0 else 0


def bars(counts: dict[str, int], title: str, xlabel: str) -> Figure:
    """A bar per key, with its count written on top: agreement levels, predicted classes."""
    fig = Figure(figsize=(max(5.0, 0.6 * len(counts) + 2), 3.6), layout="constrained")
    ax = fig.subplots()
    positions = np.arange(len(counts))
    drawn = ax.bar(positions, list(counts.values()), color="tab:blue")
    ax.bar_label(drawn, fontsize=8)
    ax.set_xticks(positions, list(counts.keys()), rotation=45 if len(counts) > 6 else 0, ha="right"
                  if len(counts) > 6 else "center", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # images come in whole numbers
    ax.set_title(title, fontsize=10)
    return fig


def coverage_accuracy(curve: pd.DataFrame, levels: pd.DataFrame) -> Figure:
    """Accuracy of the rows accepted against the share accepted, most agreed first; each agreement
    level's cut marked, so a reader sees what checking the rest by hand buys."""
    figure = Figure(figsize=(6.5, 4), layout="constrained")
    ax = figure.add_subplot()
    ax.plot(curve["coverage"], curve["accuracy"], color="#1f77b4")
    seen = set()
    for step, row in enumerate(levels.itertuples()):
        if row.images and row.images not in seen:  # a level that adds no rows is the same point
            seen.add(row.images)
            ax.plot(row.coverage, row.accuracy, "o", color="#d62728")
            # Alternate above and below, left of the dot: the last levels crowd the right edge.
            ax.annotate(row.level, (row.coverage, row.accuracy), textcoords="offset points",
                        xytext=(-36, 8 if step % 2 else -14), fontsize=8)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("coverage (rows accepted, most agreed and most confident first)")
    ax.set_ylabel("accuracy of the accepted rows")
    ax.set_title("coverage against accuracy; dots: accept every row with at least k of n agreeing", fontsize=9)
    ax.grid(alpha=0.3)
    return figure


def reliability_diagrams(reliabilities: dict) -> Figure:
    """Per member and for the vote (report.reliability): accuracy against confidence, before and after the
    temperatures, on the diagonal where a probability means what it says; dot area ~ images in the bin."""
    n = len(reliabilities)
    cols, rows = min(n, PANEL_COLUMNS), -(-n // PANEL_COLUMNS)
    fig = Figure(figsize=(3.3 * cols, 3.3 * rows + 0.3), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    for k, (ax, (name, result)) in enumerate(zip(axes, reliabilities.items())):
        ax.plot([0, 1], [0, 1], color="grey", lw=1, ls=":")
        for curve, ece, label, colour in ((result.curve_raw, result.ece_raw, "raw", "tab:orange"),
                                          (result.curve, result.ece, "calibrated", "tab:blue")):
            size = 200 * curve["images"] / max(curve["images"].sum(), 1)
            ax.plot(curve["confidence"], curve["accuracy"], "-", color=colour, lw=1.2,
                    label=f"{label}, ECE {ece:.3f}")
            ax.scatter(curve["confidence"], curve["accuracy"], s=size + 4, color=colour, zorder=3)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("confidence")
        if k % cols == 0:
            ax.set_ylabel("share right")
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig
