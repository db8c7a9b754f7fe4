"""`ferlab report`: the seed's iteration table (Markdown) for any set of runs, and one comparison plot."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .plots import read_metrics  # noqa: E402

COLUMNS = ("run", "model", "input", "params", "train acc", "val acc", "test acc", "test acc (flip TTA)", "gap",
           "epochs", "time")


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run folders (those with summary.json) named directly or found under the given folders."""
    runs = []
    for p in map(Path, paths):
        if (p / "summary.json").exists():
            runs.append(p)
        elif p.is_dir():
            runs += sorted(q.parent for q in p.glob("*/summary.json"))
        else:
            raise FileNotFoundError(f"{p}: not a run folder (no summary.json) nor a folder of runs")
    if not runs:
        raise FileNotFoundError(f"no finished runs (summary.json) under {', '.join(map(str, paths))}")
    return runs


def _fmt_time(s: float) -> str:
    return f"{s / 60:.1f} min" if s < 3600 else f"{s / 3600:.2f} h"


def report_table(runs: list[Path]) -> str:
    rows = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in runs:
        s = json.loads((r / "summary.json").read_text())
        tta = s.get("test_accuracy_tta")
        rows.append("| " + " | ".join([
            r.name, s["model"], s["input"], f"{s['params']:,}", f"{s['train_accuracy']:.2f}",
            f"{s['val_accuracy']:.2f}", f"{s['test_accuracy']:.2f}", f"{tta:.2f}" if tta is not None else "-",
            f"{s['gap']:+.2f}", f"{s['best_epoch']}/{s['epochs']}", _fmt_time(s["wall_time_s"])]) + " |")
    return "\n".join(rows)


def report_plot(runs: list[Path], out: Path) -> Path:
    """Validation accuracy and train-val gap per epoch, every run on the same axes."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        m = read_metrics(r / "metrics.csv")
        if not m:
            continue
        a.plot(m["epoch"], m["val_accuracy"], label=r.name)
        b.plot(m["epoch"], m["train_val_acc_gap"], label=r.name)
    a.set_title("validation accuracy (%)"); b.set_title("overfitting gap: train - val accuracy (points)")
    for ax in (a, b):
        ax.set_xlabel("epoch"); ax.grid(alpha=.3)
    a.legend(fontsize=7)
    fig.tight_layout(); fig.savefig(out, dpi=100); plt.close(fig)
    return out
