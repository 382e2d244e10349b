"""Report figures: training curves, confusion matrices, architecture comparisons, reliability
of P(referable), and the forest plot of the variants' test QWK.

Figures are built on `matplotlib.figure.Figure` directly, never through pyplot: no GUI backend
is needed, nothing is registered in pyplot's global figure list, and a figure is freed as soon
as the function returns, so the pipeline can draw hundreds of them without leaking memory.

Every function creates the parent directory of `path` and writes a PNG there (whatever the
suffix). Accuracies arrive as fractions in [0, 1] and are drawn as percentages.
"""

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from retino.evaluation.reliability import Reliability
from retino.grades import GRADE_NAMES
from retino.metrics import normalise_rows

DPI = 100
SPLITS = ("train", "val", "test")
SPLIT_STYLE = {  # one colour per split, shared by the loss and accuracy panels
    "train": {"color": "tab:blue", "label": "Train"},
    "val": {"color": "tab:orange", "label": "Validation"},
    "test": {"color": "tab:green", "label": "Test"},
}
CMAP = "Blues"


def class_labels(n: int) -> list[str]:
    """'0 No DR', '1 Mild', ... for the 5 grades; plain numbers for any other class count."""
    if n == len(GRADE_NAMES):
        return [f"{g} {name}" for g, name in enumerate(GRADE_NAMES)]
    return [str(g) for g in range(n)]


def _figure(width: float, height: float, wspace: float = 0.02) -> Figure:
    """Constrained-layout figure with a margin, so no text or spine touches the edge."""
    fig = Figure(figsize=(width, height), layout="constrained")
    fig.get_layout_engine().set(w_pad=0.1, h_pad=0.1, wspace=wspace)
    return fig


def _save(fig: Figure, path: Path | str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, facecolor="white")
    fig.clear()  # break the artist graph now rather than waiting for the garbage collector


def _series(df: pd.DataFrame, column: str, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of `column` with NaN / missing rows dropped; empty if absent."""
    if "epoch" not in df.columns:
        raise ValueError(f"history needs an 'epoch' column, got {list(df.columns)}")
    if column not in df.columns:
        return np.empty(0), np.empty(0)
    x = pd.to_numeric(df["epoch"], errors="coerce").to_numpy(dtype=np.float64)
    y = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64) * scale
    keep = np.isfinite(x) & np.isfinite(y)
    order = np.argsort(x[keep], kind="stable")
    return x[keep][order], y[keep][order]


def _marker(n_points: int) -> str | None:
    """Dots on short curves (a single epoch would otherwise be invisible), none on long ones."""
    return "o" if n_points <= 30 else None


def _epoch_axis(ax: Axes, epochs: list[np.ndarray]) -> None:
    """'Epoch' x axis with integer ticks, also for runs of one or two epochs."""
    ax.set_xlabel("Epoch")
    ax.grid(True, alpha=0.3)
    values = np.concatenate([np.empty(0), *epochs])
    if len(values) and values.max() - values.min() < 4:
        lo, hi = math.floor(values.min()), math.ceil(values.max())
        ax.set_xlim(lo - 0.5, hi + 0.5)
        ax.set_xticks(range(lo, hi + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _no_data(ax: Axes) -> None:
    ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="0.5")


def plot_curves(history: pd.DataFrame, path: Path) -> None:
    """Loss and accuracy (%) per epoch for every split present in `history`, side by side.

    `history` has an ``epoch`` column and any of ``{train,val,test}_{loss,acc}``; absent
    columns and NaN entries (e.g. test not tracked every epoch) are skipped. A list of
    per-epoch dicts (the engine's history) is accepted too.
    """
    history = pd.DataFrame(history)
    fig = _figure(10, 4.2)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, metric, scale, title, ylabel in (
        (ax_loss, "loss", 1.0, "Loss", "Loss"),
        (ax_acc, "acc", 100.0, "Accuracy", "Accuracy (%)"),
    ):
        drawn = []
        for split in SPLITS:
            x, y = _series(history, f"{split}_{metric}", scale)
            if len(x):
                ax.plot(x, y, marker=_marker(len(x)), markersize=4, **SPLIT_STYLE[split])
                drawn.append(x)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        _epoch_axis(ax, drawn)
        if drawn:
            ax.legend()
        else:
            _no_data(ax)
    _save(fig, path)


def _heatmap(
    ax: Axes, values: np.ndarray, fmt: str, vmax: float, xlabels: bool = True, ylabels: bool = True
):
    """Annotated matrix on `ax`; returns the image for a colorbar."""
    n = values.shape[0]
    im = ax.imshow(values, cmap=CMAP, vmin=0.0, vmax=vmax if vmax > 0 else 1.0)
    names = class_labels(n)
    ax.set_xticks(range(n), names if xlabels else [""] * n)
    ax.set_yticks(range(n), names if ylabels else [""] * n)
    if xlabels:
        ax.tick_params(axis="x", labelrotation=35)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")
        ax.set_xlabel("Predicted grade")
    if ylabels:
        ax.set_ylabel("True grade")
    threshold = 0.55 * (vmax if vmax > 0 else 1.0)
    fontsize = 10 if n <= 5 else 8
    for i in range(n):
        for j in range(n):
            v = values[i, j]
            ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=fontsize,
                    color="white" if v > threshold else "black")  # fmt: skip
    return im


def _square(cm, name: str = "confusion matrix") -> np.ndarray:
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty square matrix, got shape {cm.shape}")
    return cm


def plot_confusion(cm: np.ndarray, path: Path, title: str = "") -> None:
    """Counts (left) and row-normalised shares (right) of a confusion matrix.

    Rows are true grades, columns predicted grades; row normalisation makes the diagonal the
    per-grade recall, which the raw counts hide when grade 0 dominates.
    """
    counts = _square(cm)
    norm = normalise_rows(counts)
    fig = _figure(12, 5.2, wspace=0.08)  # keep the left colorbar clear of the right labels
    ax_counts, ax_norm = fig.subplots(1, 2)
    whole = np.rint(counts).astype(np.int64)
    im = _heatmap(ax_counts, whole, "d", float(whole.max()))
    fig.colorbar(im, ax=ax_counts, shrink=0.8, label="Images")
    ax_counts.set_title(f"Counts (n = {int(whole.sum())})")
    im = _heatmap(ax_norm, norm, ".2f", 1.0)
    fig.colorbar(im, ax=ax_norm, shrink=0.8, label="Share of true grade")
    ax_norm.set_title("Normalised by true grade (rows sum to 1)")
    if title:
        fig.suptitle(title, fontsize=13)
    _save(fig, path)


def plot_accuracy_comparison(series: Mapping[str, pd.DataFrame], path: Path, title: str) -> None:
    """Train (dashed) and test (solid) accuracy per epoch for several runs on one axes.

    `series` maps a label (e.g. 'pretrained', 'scratch') to a frame with columns ``epoch``,
    ``train_acc`` and ``test_acc`` in [0, 1]; each label gets one colour.
    """
    fig = _figure(8, 5)
    ax = fig.subplots()
    colours = [f"C{i}" for i in range(10)]
    drawn = []
    for i, (label, df) in enumerate(series.items()):
        colour = colours[i % len(colours)]
        for column, style, name in (("train_acc", "--", "Train"), ("test_acc", "-", "Test")):
            x, y = _series(pd.DataFrame(df), column, 100.0)
            if len(x):
                ax.plot(x, y, linestyle=style, color=colour, marker=_marker(len(x)),
                        markersize=3.5, label=f"{name} ({label})")  # fmt: skip
                drawn.append(x)
    ax.set_ylabel("Accuracy (%)")
    ax.set_title(title)
    _epoch_axis(ax, drawn)
    if drawn:
        ax.legend(loc="best", ncols=2 if len(drawn) > 4 else 1)
    else:
        _no_data(ax)
    _save(fig, path)


def plot_confusion_grid(matrices: Mapping[str, np.ndarray], path: Path, title: str = "") -> None:
    """Row-normalised confusion matrices side by side, one per entry (key = subplot title).

    Up to 3 columns; class names only on the outer axes, and one shared colour scale.
    Matrices may be counts or already normalised (normalising twice changes nothing).
    """
    if not matrices:
        raise ValueError("plot_confusion_grid needs at least one matrix")
    items = [(name, normalise_rows(_square(cm, name))) for name, cm in matrices.items()]
    n = len(items)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    # Fixed geometry in inches. Constrained layout mis-sizes rows of square (imshow) axes with
    # rotated tick labels and cuts the bottom labels off, so the margins are set explicitly.
    side, gap_x, gap_y = 3.2, 0.3, 1.55  # gap_y leaves room for x labels above an empty slot
    left, right, bottom = 1.45, 1.3, 1.15
    top = 0.45 + (0.45 if title else 0.0)
    width = left + ncols * side + (ncols - 1) * gap_x + right
    height = top + nrows * side + (nrows - 1) * gap_y + bottom
    fig = Figure(figsize=(width, height))
    grid = fig.add_gridspec(
        nrows, ncols, left=left / width, right=1 - right / width, bottom=bottom / height,
        top=1 - top / height, wspace=gap_x / side, hspace=gap_y / side,
    )  # fmt: skip
    im = None
    for k, (name, norm) in enumerate(items):
        ax = fig.add_subplot(grid[k // ncols, k % ncols])
        below_empty = k + ncols >= n  # nothing drawn underneath: this axes owns the x labels
        im = _heatmap(ax, norm, ".2f", 1.0, xlabels=below_empty, ylabels=k % ncols == 0)
        ax.set_title(name)
    bar_height = min(nrows * side, 4.0)
    bar_bottom = bottom + (nrows * side + (nrows - 1) * gap_y - bar_height) / 2
    cax = fig.add_axes((1 - (right - 0.3) / width, bar_bottom / height, 0.18 / width,
                        bar_height / height))  # fmt: skip
    fig.colorbar(im, cax=cax, label="Share of true grade")
    if title:
        fig.suptitle(title, fontsize=13, y=1 - 0.2 / height, va="top")
    _save(fig, path)


def plot_reliability(rel: Reliability, path: Path, title: str = "") -> None:
    """Observed share of referable DR against the model's P(referable) per bin, with its 95 %
    interval (a bin of few images says little), the diagonal a calibrated model follows and the
    ECE (above); how many images each bin holds (below). A regression score has no diagonal: the
    panel shows how the referable share rises with the score."""
    fig = _figure(6.5, 6.2)
    ax, ax_count = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    centres = (rel.edges[:-1] + rel.edges[1:]) / 2
    filled = rel.count > 0
    n = int(rel.count.sum())
    if rel.probability:
        ax.plot([0, 1], [0, 1], linestyle="--", color="0.5", label="calibrated")
        x = rel.predicted[filled]
        what = f"expected calibration error {rel.ece:.3f} (n = {n})"
        xlabel = "Predicted P(referable) = p2 + p3 + p4"
    else:
        x = centres[filled]
        what = f"no calibration error: a regression score is no probability (n = {n})"
        xlabel = "Regression score (the grade as a number)"
    y = rel.observed[filled]
    spread = np.vstack([y - rel.observed_lo[filled], rel.observed_hi[filled] - y])
    ax.errorbar(x, y, yerr=spread, marker="o", color="tab:blue", capsize=3,
                label="observed, with its 95 % interval")  # fmt: skip
    ax.set_ylabel("Share truly referable (grade >= 2)")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    ax.set_title(what, fontsize=10)
    width = rel.edges[1] - rel.edges[0]
    ax_count.bar(centres, rel.count, width=width * 0.9, color="tab:blue", alpha=0.6)
    ax_count.set_xlabel(xlabel)
    ax_count.set_ylabel("Images")
    ax_count.set_xlim(rel.edges[0], rel.edges[-1])
    fig.suptitle(title or "Reliability of the referable-DR output (test set)", fontsize=12)
    _save(fig, path)


def plot_forest(rows: list[tuple[str, Any]], path: Path, title: str, subtitle: str = "") -> None:
    """Each variant's test QWK as a square with its 95 % interval, its seeds as dots, the best
    on top, the numbers on the right. `rows`: (variant, estimate) with `point`, `lo`, `hi`, `sd`,
    `seeds` (retino.evaluation.variants.Estimate)."""
    if not rows:
        raise ValueError("plot_forest needs at least one variant")
    rows = sorted(rows, key=lambda r: r[1].point)  # the best at the top (largest y)
    fig = _figure(10, 1.9 + 0.55 * len(rows))
    ax = fig.subplots()
    seeded = False
    for y, (_, e) in enumerate(rows):
        ax.plot([e.lo, e.hi], [y, y], color="tab:blue", linewidth=2, solid_capstyle="butt")
        ax.plot([e.point], [y], marker="s", markersize=8, color="tab:blue")
        if len(e.seeds) > 1:
            ax.plot(e.seeds, [y + 0.2] * len(e.seeds), "o", markersize=4, color="tab:orange",
                    label=None if seeded else "one seed's run")  # fmt: skip
            seeded = True
    best = rows[-1][1]
    ax.axvspan(best.lo, best.hi, color="tab:blue", alpha=0.08, label="the best's interval")
    ylim = (-0.7, len(rows) - 0.3)
    ax.set_yticks(range(len(rows)), [name for name, _ in rows])
    ax.set_ylim(*ylim)
    numbers = ax.twinx()  # the values, as labels on the right
    numbers.set_ylim(*ylim)
    numbers.set_yticks(
        range(len(rows)),
        [f"{e.point:.3f} [{e.lo:.3f}, {e.hi:.3f}]"
         + (f"\n± {e.sd:.3f} over {len(e.seeds)} seeds" if e.sd is not None else "")
         for _, e in rows],
    )  # fmt: skip
    numbers.tick_params(axis="y", length=0, labelsize=9)
    ax.set_xlabel("Test QWK (mean over seeds)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(subtitle, fontsize=9, color="0.3")
    fig.suptitle(title, fontsize=12)
    _save(fig, path)
