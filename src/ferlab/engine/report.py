"""`ferlab report`: the seed's iteration table (Markdown) for any set of runs, and one comparison plot.

A sweep folder (<out_dir>/<study>, holding trials/trial-NNNN run folders) is reported as a group: one row per
finished trial with the config keys the trials differ in (the swept parameters), and its best trial, by
validation accuracy as the study chose it, joins the other runs in the main table and the plot. Everything is
read from the run folders, so the report needs no access to the study's database.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .plots import plain_text, read_metrics, save_figure  # noqa: E402

COLUMNS = ("run", "model", "input", "params", "train acc", "val acc", "test acc", "test acc (flip TTA)", "gap",
           "epochs", "time")
SWEEP_COLUMNS = ("trial", "val acc", "test acc", "epochs")
NOT_SWEPT = ("name", "out_dir")  # differ between any two trials by construction


@dataclass
class Sweep:
    name: str
    folder: Path
    trials: list[Path]   # finished trials (with summary.json), best first

    @property
    def best(self) -> Path:
        return self.trials[0]


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _sweep(folder: Path) -> Sweep:
    trials = sorted((q.parent for q in (folder / "trials").glob("*/summary.json")),
                    key=lambda r: (-_summary(r)["val_accuracy"], r.name))
    return Sweep(folder.name, folder, trials)


def find_runs(paths: list[str | Path]) -> tuple[list[Path], list[Sweep]]:
    """Run folders (those with summary.json) named directly or found under the given folders, and sweep
    folders (with trials/) with their finished trials."""
    runs, sweeps = [], []
    for p in map(Path, paths):
        if (p / "summary.json").exists():
            runs.append(p)
        elif (p / "trials").is_dir():
            sweep = _sweep(p)
            if not sweep.trials:
                raise FileNotFoundError(f"{p}: a sweep folder without a finished trial (no trials/*/summary.json)")
            sweeps.append(sweep)
        elif p.is_dir():
            runs += sorted(q.parent for q in p.glob("*/summary.json"))
        else:
            raise FileNotFoundError(f"{p}: not a run folder (no summary.json), a folder of runs, nor a sweep folder "
                                    "(with trials/)")
    if not runs and not sweeps:
        raise FileNotFoundError(f"no finished runs (summary.json) under {', '.join(map(str, paths))}")
    return runs, sweeps


def _fmt_time(s: float) -> str:
    return f"{s / 60:.1f} min" if s < 3600 else f"{s / 3600:.2f} h"


def _table(head, rows) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def report_table(runs: list[Path], labels: list[str] | None = None) -> str:
    """The seed's iteration table, one row per run (named by `labels`, default the folder names)."""
    rows, shrunk = [], False
    for r, label in zip(runs, labels or [r.name for r in runs]):
        s = _summary(r)
        tta = s.get("test_accuracy_tta")
        if s.get("fraction", 1.0) < 1.0:
            label, shrunk = f"{label} (fraction {s['fraction']:g}*)", True
        rows.append([
            label, s["model"], s["input"], f"{s['params']:,}", f"{s['train_accuracy']:.2f}",
            f"{s['val_accuracy']:.2f}", f"{s['test_accuracy']:.2f}", f"{tta:.2f}" if tta is not None else "-",
            f"{s['gap']:+.2f}", f"{s['best_epoch']}/{s['epochs']}", _fmt_time(s["wall_time_s"])])
    note = ("\n\n* trained and scored on that share of every split: its val and test accuracies come from shrunk "
            "splits and are not comparable with full-split runs") if shrunk else ""
    return _table(COLUMNS, rows) + note


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(map(_cell, v)) + "]"
    return "-" if v is None else str(v)


def sweep_table(sweep: Sweep) -> str:
    """One row per finished trial, best first: accuracies, the swept config keys, and where it ran."""
    configs = [_flat(yaml.safe_load((t / "config.yaml").read_text())) for t in sweep.trials]
    keys = sorted({k for c in configs for k in c} - set(NOT_SWEPT))
    swept = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
    rows = []
    for t, c in zip(sweep.trials, configs):
        s = _summary(t)
        rows.append([t.name, f"{s['val_accuracy']:.2f}", f"{s['test_accuracy']:.2f}",
                     f"{s['best_epoch']}/{s['epochs']}", *[_cell(c.get(k)) for k in swept],
                     ", ".join(s.get("hosts") or ["-"])])
    return _table((*SWEEP_COLUMNS, *swept, "hosts"), rows)


def best_label(sweep: Sweep) -> str:
    return f"{sweep.name} best ({sweep.best.name})"


@plain_text()
def report_plot(runs: list[Path], out: Path, labels: list[str] | None = None) -> Path:
    """Validation accuracy and train-val gap per epoch, every run on the same axes."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for r, label in zip(runs, labels or [r.name for r in runs]):
        m = read_metrics(r / "metrics.csv")
        if not m:
            continue
        a.plot(m["epoch"], m["val_accuracy"], label=label)
        b.plot(m["epoch"], m["train_val_acc_gap"], label=label)
    a.set_title("validation accuracy (%)"); b.set_title("overfitting gap: train - val accuracy (points)")
    for ax in (a, b):
        ax.set_xlabel("epoch"); ax.grid(alpha=.3)
    a.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out)
