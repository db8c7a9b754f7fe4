"""Trackers plug in here; the training loop only calls `on_epoch_end` / `on_train_end` on a list."""
from __future__ import annotations

import csv
import sys
import warnings
from pathlib import Path

from .._atomic import replacing

METRIC_KEYS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "train_val_acc_gap", "lr",
               "epoch_time_s", "images_per_s")


class Callback:
    def on_epoch_end(self, epoch: int, metrics: dict) -> None: ...
    def on_train_end(self, summary: dict) -> None: ...


class CSVLogger(Callback):
    """metrics.csv, one row per epoch, rewritten whole each epoch (a full disk never leaves half a row); on
    resume the rows after the resumed epoch are dropped."""

    def __init__(self, run_dir: Path, resume_epoch: int = 0):
        self.path = Path(run_dir) / "metrics.csv"
        self.rows = []
        if resume_epoch and self.path.exists():
            with self.path.open() as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= resume_epoch]
        self._write()

    def on_epoch_end(self, epoch, metrics):
        self.rows.append({k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()})
        self._write()

    def _write(self):
        with replacing(self.path) as tmp, tmp.open("w", newline="") as f:
            extra = [k for r in self.rows[:1] for k in r if k not in METRIC_KEYS]  # e.g. the selection's scores
            w = csv.DictWriter(f, [*METRIC_KEYS, *extra], extrasaction="ignore")
            w.writeheader()
            w.writerows(self.rows)


class PrintLogger(Callback):
    def on_epoch_end(self, epoch, m):
        print(f"epoch {epoch:3d}  train loss {m['train_loss']:.4f} acc {m['train_accuracy']:.2f}  "
              f"val loss {m['val_loss']:.4f} acc {m['val_accuracy']:.2f}  gap {m['train_val_acc_gap']:+.2f}  "
              f"lr {m['lr']:.2e}  {m['images_per_s']:.0f} img/s"
              + (f"  corrupted val acc {m['val_corrupted_accuracy']:.2f} select {m['val_select']:.2f}"
                 if "val_select" in m else ""), file=sys.stderr, flush=True)


class WandbLogger(Callback):
    """The seed's W&B keys; works with WANDB_MODE=offline; a missing wandb only warns."""

    def __init__(self, project: str, name: str, config: dict, run_dir: Path):
        from .._optional import MissingExtra, need
        try:
            wandb = need("wandb", "wandb", "--wandb")
        except MissingExtra as e:  # a run is worth more than its W&B mirror: the CSV and plots still record it
            warnings.warn(f"{e}; training without W&B logging")
            self.run = None
            return
        self.run = wandb.init(project=project, name=name, config=config, dir=str(run_dir), reinit=True)

    def on_epoch_end(self, epoch, m):
        if self.run is not None:
            self.run.log({k: m[k] for k in ("train_loss", "val_loss", "train_accuracy", "val_accuracy",
                                             "train_val_acc_gap")}, step=epoch)

    def on_train_end(self, summary):
        if self.run is not None:
            self.run.summary["overfitting_gap"] = summary["gap"]
            self.run.summary["test_accuracy"] = summary.get("test_accuracy")
            self.run.finish()
