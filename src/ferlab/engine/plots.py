"""PNG plots of a run: loss/accuracy curves, the confusion matrix and the reliability diagram."""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .._atomic import replacing  # noqa: E402


def plain_text():
    """Text drawn under it is shown as written, never parsed as mathtext: the names in titles and legends (a
    video's, a run's, a sweep's) are the user's, and one holding two `$` ('$\\frac{$.mp4') would otherwise be
    read as a formula and fail the whole plot. A `with` block or a decorator."""
    return matplotlib.rc_context({"text.parse_math": False})


def save_figure(fig, out: Path) -> Path:
    """`fig` saved whole at `out` (in the format its suffix names, PNG without one) or not at all: a full disk
    is one WriteError naming it. The figure is closed."""
    try:
        with replacing(out) as tmp:
            fig.savefig(tmp, dpi=100, format=Path(out).suffix[1:] or "png")
    finally:
        plt.close(fig)
    return Path(out)


def read_metrics(path: Path) -> dict[str, list[float]]:
    with Path(path).open() as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows] for k in (rows[0].keys() if rows else [])}


@plain_text()
def plot_curves(metrics_csv: Path, out: Path, title: str = "") -> None:
    m = read_metrics(metrics_csv)
    if not m:
        return
    from matplotlib.ticker import MaxNLocator
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    mark = "o" if len(m["epoch"]) < 30 else None  # a run of one epoch is one point: draw it
    a.plot(m["epoch"], m["train_loss"], label="train", marker=mark)
    a.plot(m["epoch"], m["val_loss"], label="val", marker=mark)
    a.set_xlabel("epoch"); a.set_ylabel("loss"); a.legend(); a.grid(alpha=.3)
    b.plot(m["epoch"], m["train_accuracy"], label="train", marker=mark)
    b.plot(m["epoch"], m["val_accuracy"], label="val", marker=mark)
    b.set_xlabel("epoch"); b.set_ylabel("accuracy (%)"); b.legend(); b.grid(alpha=.3)
    for ax in (a, b):
        if len(m["epoch"]) == 1:  # matplotlib would zoom onto the one point, between fractional ticks
            ax.set_xlim(m["epoch"][0] - 1, m["epoch"][0] + 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    fig.suptitle(title); fig.tight_layout(); save_figure(fig, out)


@plain_text()
def plot_confusion(cm: np.ndarray, classes, out: Path, title: str = "") -> None:
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right"); ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted"); ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{cm[i, j]}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > .5 else "black")
    fig.colorbar(im, ax=ax); ax.set_title(title); fig.tight_layout(); save_figure(fig, out)


@plain_text()
def plot_reliability(bins: dict, out: Path, title: str = "") -> None:
    """Accuracy against confidence per bin (`calibration.reliability`), bars over the diagonal of perfect
    calibration, with the share of faces in each bin below."""
    edges = np.asarray(bins["edges"])
    width, left = np.diff(edges), edges[:-1]
    count = np.asarray(bins["count"])
    acc = np.where(count > 0, bins["accuracy"], 0)
    conf = np.where(count > 0, bins["confidence"], 0)
    fig, (a, b) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    a.bar(left, acc, width, align="edge", edgecolor="k", label="accuracy")
    a.bar(left, conf - acc, width, bottom=acc, align="edge", color="tab:red", alpha=.3, label="gap to confidence")
    a.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    a.set_ylabel("accuracy"); a.set_ylim(0, 1); a.legend(loc="upper left"); a.grid(alpha=.3); a.set_title(title)
    b.bar(left, count / max(count.sum(), 1), width, align="edge", edgecolor="k", color="gray")
    b.set_xlabel("confidence (top-class probability)"); b.set_ylabel("share of faces"); b.set_xlim(0, 1)
    fig.tight_layout(); save_figure(fig, out)
