"""The report's pictures and tables read right: visible numbers, named axes, honest highlights."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb

from quorum.report import plots
from quorum.report.build import build_report
from quorum.report.html import render_html
from test_report import CLASSES, VOTED, trio, write_handmade  # noqa: F401 (trio is a fixture)


def luminance(colour) -> float:
    """WCAG relative luminance of a matplotlib colour."""
    channels = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in to_rgb(colour)]
    return 0.2126 * channels[0] + 0.7152 * channels[1] + 0.0722 * channels[2]


def contrast(one, other) -> float:
    light, dark = sorted((luminance(one), luminance(other)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_every_count_in_a_confusion_matrix_is_readable_on_its_cell():
    # Each row holds 6 images: a count of 1 is a share of 0.17, the palest blue that still shows a number.
    matrix = [[5, 1, 0], [1, 4, 1], [0, 0, 6]]
    fig = plots.confusion_matrices({"m": matrix, "ensemble": matrix}, CLASSES)
    for ax in fig.axes[:2]:
        image = ax.images[0]
        for text in ax.texts:
            x, y = (int(round(v)) for v in text.get_position())
            cell = image.cmap(image.norm(image.get_array()[y, x]))
            assert contrast(text.get_color(), cell) >= 3, (text.get_text(), text.get_color(), cell)


def test_the_difference_panel_names_the_classes():
    fig = plots.best_vs_ensemble("a", [[2, 1], [0, 3]], [[3, 0], [0, 3]], ("cat", "dog"))
    diff = [ax for ax in fig.axes if ax.get_title().startswith("ensemble - a")][0]
    assert [t.get_text() for t in diff.get_yticklabels()] == ["cat", "dog"]
    assert [t.get_text() for t in diff.get_xticklabels()] == ["cat", "dog"]


def test_a_loss_panel_has_a_legend_and_an_early_spike_does_not_flatten_it():
    history = pd.DataFrame({"epoch": range(1, 9), "phase": [1] * 4 + [2] * 4,
                            "train_loss": [2.2, 1.4, 1.1, 0.9, 0.8, 0.7, 0.65, 0.6],
                            "val_loss": [22.7, 1.3, 1.0, 0.95, 0.9, 0.85, 0.8, 0.82],
                            "train_accuracy": np.linspace(0.3, 0.9, 8), "val_accuracy": np.linspace(0.2, 0.8, 8)})
    fig = plots.training_curves({"m": history})
    loss = [ax for ax in fig.axes if ax.get_title() == "m: loss"][0]
    assert loss.get_legend() is not None
    assert {t.get_text() for t in loss.get_legend().get_texts()} >= {"train", "val"}
    assert 2.2 < loss.get_ylim()[1] < 4  # the spike is marked, not scaled to
    assert any("22.7" in text.get_text() for text in loss.texts)


def visible_labels(ax, axis: str, renderer):
    ticks = (ax.xaxis if axis == "x" else ax.yaxis)
    labels = [label for label in ticks.get_ticklabels(which="both") if label.get_visible() and label.get_text()]
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    position = (lambda label: label.get_position()[0]) if axis == "x" else (lambda label: label.get_position()[1])
    return [(label.get_text(), label.get_window_extent(renderer))
            for label in labels if min(lo, hi) <= position(label) <= max(lo, hi)]


@pytest.mark.parametrize("times", [[0.8, 1.3, 2.1, 7.0], [3.0, 4.1, 5.2, 9.0], [0.4, 60.0, 80.0, 140.0]])
def test_the_log_time_axis_labels_do_not_overlap(times):
    table = pd.DataFrame({"model": ["a", "b", "c", "ensemble"], "ms_per_image": times,
                          "accuracy": [0.5, 0.6, 0.7, 0.8], "parameters": [1e6, 2e6, 3e6, 6e6]})
    fig = plots.accuracy_vs_time(table, "ensemble")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    labels = visible_labels(fig.axes[0], "x", canvas.get_renderer())
    assert len(labels) >= 2
    boxes = sorted((box for _, box in labels), key=lambda box: box.x0)
    for left, right in zip(boxes, boxes[1:]):
        assert left.x1 + 2 <= right.x0, [text for text, _ in labels]


def test_count_charts_tick_whole_numbers():
    fig = plots.bars({"cat": 1, "dog": 2, "fox": 1}, "predicted class counts", "predicted class")
    ticks = fig.axes[0].get_yticks()
    assert all(float(t).is_integer() for t in ticks), ticks


def page(models):
    report = build_report(models, timing=False)
    return report, render_html(report, {}, [])


def highlighted(html: str) -> list[str]:
    """The rows in bold in the comparison table (the page's first; the vote rules' table marks its own best)."""
    return re.findall(r'<tr class="best"><td>([^<]*)</td>', html.split("</table>")[0])


def test_the_ensemble_row_is_highlighted_only_when_it_is_best(trio, tmp_path):  # noqa: F811
    report, html = page(trio)  # a: 77.8%, the ensemble 66.7%
    assert highlighted(html) == ["a"]
    models = tmp_path / "agreeing"
    for name in ("a", "b", "c"):
        write_handmade(models, name, VOTED["a"] if name != "c" else VOTED["b"])
    assert highlighted(page(models)[1]) == ["ensemble"]  # a tie with the best member: the vote wins it


def test_no_table_header_cell_is_empty(trio):  # noqa: F811
    _, html = page(trio)
    headers = re.findall(r"<th>(.*?)</th>", html)
    assert headers and all(h.strip() for h in headers)


def test_every_dot_is_drawn_when_no_model_records_its_parameters():
    # Bundles without num_params gave every dot a NaN area: nothing was drawn (and a legend failed to).
    table = pd.DataFrame({"model": ["a", "a (int8)", "ensemble"], "ms_per_image": [1.0, 0.5, 2.0],
                          "accuracy": [0.6, 0.55, 0.7], "parameters": pd.array([None] * 3, dtype="Int64"),
                          "engine": ["onnx", "int8", "onnx"], "kind": ["member", "member", "vote"]})
    fig = plots.accuracy_vs_time(table, "ensemble")
    FigureCanvasAgg(fig).draw()
    sizes = np.concatenate([collection.get_sizes() for collection in fig.axes[0].collections])
    assert len(sizes) == 3 and np.isfinite(sizes).all() and (sizes > 0).all()
