"""The report's figures, drawn with matplotlib (Agg, no display) from the numbers of `analysis.json`.

Each function takes those numbers (percent values, precision as fractions) and a PNG path, and
writes the figure there. Colours are never the only cue: curves carry their name in the legend and
a different line style, the confusion matrix prints its counts.
"""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from detkit.evaluation.error_breakdown import ERROR_KEYS  # noqa: E402

DPI = 80
# The COCO analysis tool's palette, from the strictest curve to the most lenient.
ERROR_COLORS = ("#e8e8e8", "#1f77b4", "#2ca02c", "#9467bd", "#d62728", "#ff7f0e", "#8c564b")
ERROR_LABELS = {
    "C75": "C75: IoU .75",
    "C50": "C50: IoU .50",
    "Loc": "Loc: localisation ignored",
    "Sim": "Sim: supercategory confusion ignored",
    "Oth": "Oth: all class confusion ignored",
    "BG": "BG: background FPs ignored",
    "FN": "FN: misses ignored",
}


def _save(fig, path: Path, tight: bool = True) -> None:
    """Write and close; `tight=False` for grids already laid out by `tight_layout` (one drawing pass less)."""
    fig.savefig(path, dpi=DPI, bbox_inches="tight" if tight else None)
    plt.close(fig)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def per_class_bars(per_class: dict, path: Path) -> None:
    """Horizontal bars of AP per class, sorted by AP (classes without ground truth last), AP50 as ticks."""
    rows = sorted(per_class.items(), key=lambda kv: (kv[1]["AP"] is None, -(kv[1]["AP"] or 0.0)))
    names = [n for n, _ in rows][::-1]
    ap = [r["AP"] or 0.0 for _, r in rows][::-1]
    ap50 = [r["AP50"] or 0.0 for _, r in rows][::-1]
    fig, ax = plt.subplots(figsize=(7, 1.0 + 0.28 * len(names)))
    y = np.arange(len(names))
    ax.barh(y, ap, color="#4c72b0", label="AP (IoU .50:.95)")
    ax.plot(ap50, y, "k|", markersize=12, markeredgewidth=2, label="AP50")
    ax.set_yticks(y, names)
    ax.set_xlim(0, 100)
    ax.set_xlabel("AP (%)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)


def _pr_axes(ax, recall, curves: dict, points: dict, title: str) -> None:
    """Curves {"0.5": [R] | None, "0.75": ...} and their operating points on one axes."""
    for key, style in (("0.5", "-"), ("0.75", "--")):
        if curves.get(key) is None:
            continue
        ax.plot(recall, curves[key], style, color="#4c72b0" if key == "0.5" else "#dd8452", label=f"IoU {key}")
        point = points.get(key)
        if point is not None:
            ax.plot(*point, "o" if key == "0.5" else "s", color="k", markersize=5, markerfacecolor="none")
    ax.set_xlim(0, 1)
    ax.set_xticks([0, 0.5, 1])
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def pr_overall(pr: dict, score_threshold: float, path: Path) -> None:
    """The class-averaged precision-recall curves at IoU .5 and .75, the operating point marked."""
    fig, ax = plt.subplots(figsize=(5, 4))
    _pr_axes(ax, pr["recall"], pr["overall"], pr["operating_points"]["overall"], "mean over classes")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.plot([], [], "ko", markerfacecolor="none", label=f"score >= {score_threshold:g}")
    ax.legend(fontsize=8, loc="lower left")
    _save(fig, path)


def _grid(n: int, columns: int = 6):
    """A figure of n small panels sharing their axes (tick labels on the outer panels only: drawing the
    text of 80 panels is most of a val2017 report's time)."""
    columns = max(1, min(columns, n))
    rows = max(1, math.ceil(n / columns))
    height = 2.2 * rows + 1.0  # inches: the panels, a legend row above them
    fig, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, height), squeeze=False, sharex=True, sharey=True)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.4 / height, top=1 - 0.9 / height, hspace=0.3, wspace=0.12)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat


def pr_per_class(pr: dict, path: Path) -> None:
    """One small precision-recall panel per class (IoU .5 solid, .75 dashed; circles/squares: operating point)."""
    names = list(pr["per_class"])
    fig, axes = _grid(len(names))
    for ax, name in zip(axes, names):
        _pr_axes(ax, pr["recall"], pr["per_class"][name], pr["operating_points"]["per_class"][name], name)
    handles, labels = next(iter(fig.axes)).get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=2, fontsize=8, frameon=False)
    _save(fig, path, tight=False)


def _breakdown_axes(ax, recall, curves: dict, title: str) -> None:
    """The COCO analysis plot: areas under the seven curves stacked from FN (back) to C75 (front)."""
    for key, color in reversed(list(zip(ERROR_KEYS, ERROR_COLORS))):
        if curves.get(key) is not None:
            ax.fill_between(recall, curves[key], color=color, label=ERROR_LABELS[key])
            ax.plot(recall, curves[key], color="k", linewidth=0.4)
    ax.set_xlim(0, 1)
    ax.set_xticks([0, 0.5, 1])
    ax.set_ylim(0, 1.0)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)


def breakdown_overall(errors: dict, recall, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    _breakdown_axes(ax, recall, errors["curves"]["overall"], "all classes")
    handles, labels = ax.get_legend_handles_labels()
    aps = [errors["overall"][key] for key in reversed(ERROR_KEYS) if errors["overall"][key] is not None]
    labels = [f"[{ap / 100:.3f}] {label}" for ap, label in zip(aps, labels)]
    ax.legend(handles[::-1], labels[::-1], fontsize=7, loc="lower left", framealpha=0.8)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    _save(fig, path)


def breakdown_per_class(errors: dict, recall, path: Path) -> None:
    """One panel per class with ground truth, one legend for all (each class's APs: the page's table)."""
    names = [n for n in errors["per_class"] if errors["per_class"][n]["C75"] is not None]
    fig, axes = _grid(max(1, len(names)))
    for ax, name in zip(axes, names):
        c50 = errors["per_class"][name]["C50"]
        _breakdown_axes(ax, recall, errors["curves"]["per_class"][name], f"{name} (C50 {c50:.1f})")
    handles, labels = next(iter(fig.axes)).get_legend_handles_labels()
    fig.legend(handles[::-1], labels[::-1], loc="upper center", ncol=4, fontsize=8, frameon=False)
    _save(fig, path, tight=False)


def confusion_heatmap(confusion: dict, path: Path) -> None:
    """Rows normalised to 1 (the background row by its own total), counts printed in the cells."""
    names = confusion["classes"]
    matrix = np.asarray(confusion["matrix"], dtype=np.float64)
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = 1.5 + 0.45 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted class (background: missed)")
    ax.set_ylabel("ground-truth class (background: false positive on nothing)")
    if len(names) <= 25:
        for i in range(len(names)):
            for j in range(len(names)):
                if matrix[i, j]:
                    ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if rows[i, j] > 0.5 else "black")  # fmt: skip
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the row")
    ax.set_title(f"IoU {confusion['iou']:g}, score >= {confusion['score_threshold']:g}", fontsize=9)
    _save(fig, path)


def size_chart(sizes: dict, path: Path) -> None:
    """AP and AP50 per sqrt(area) bin (bars), recall at IoU .5 and at the score threshold (lines); the
    empty bins at either end are left out."""
    filled = [i for i, n in enumerate(sizes["num_gt"]) if n] or [0]
    keep = range(filled[0], filled[-1] + 1)

    def values(key):
        return [np.nan if sizes[key][i] is None else sizes[key][i] for i in keep]

    x = np.arange(len(keep))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(x - 0.2, values("AP"), width=0.4, color="#4c72b0", label="AP")
    ax.bar(x + 0.2, values("AP50"), width=0.4, color="#a1c9f4", hatch="//", label="AP50")
    for key, style, label in (("recall50", "ko-", "recall, IoU .5, 100 dets"),
                              ("recall_at_threshold", "k^--", "recall, IoU .5, score >= threshold")):  # fmt: skip
        if key in sizes:
            ax.plot(x, values(key), style, label=label)
    ax.set_xticks(x, [f"{sizes['bins'][i]}\nn={sizes['num_gt'][i]}" for i in keep], fontsize=8)
    ax.set_xlabel("sqrt(area) of the ground-truth box (px); n: boxes")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
