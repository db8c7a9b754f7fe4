"""Classification metrics from probabilities: accuracy, per-class precision/recall/F1, confusion matrix, ECE."""
from __future__ import annotations

import numpy as np
import torch

from ..data.classes import CLASSES
from .calibration import ECE_BINS, expected_calibration_error, reliability


def classification_report(probs: torch.Tensor, labels: torch.Tensor, classes=CLASSES) -> dict:
    """Per-class figures are keyed by `classes`' names, in its order (the model's outputs)."""
    pred = probs.argmax(1).numpy()
    y = labels.numpy()
    k = len(classes)
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(float)
    precision = tp / np.maximum(cm.sum(0), 1)
    recall = tp / np.maximum(cm.sum(1), 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    return {"accuracy": 100 * tp.sum() / max(len(y), 1), "confusion": cm,
            "precision": dict(zip(classes, (100 * precision).round(2).tolist())),
            "recall": dict(zip(classes, (100 * recall).round(2).tolist())),
            "f1": dict(zip(classes, (100 * f1).round(2).tolist())),
            "macro_f1": float(100 * f1.mean()), "support": dict(zip(classes, cm.sum(1).tolist())),
            "ece": expected_calibration_error(probs, labels), "reliability": reliability(probs, labels)}


def format_report(rep: dict) -> str:
    lines = [f"{'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for c in rep["recall"]:  # the report's classes, in its order
        lines.append(f"{c:<10}{rep['precision'][c]:>10.2f}{rep['recall'][c]:>10.2f}{rep['f1'][c]:>10.2f}"
                     f"{rep['support'][c]:>10}")
    lines.append(f"accuracy {rep['accuracy']:.2f}%   macro F1 {rep['macro_f1']:.2f}   "
                 f"ECE ({ECE_BINS} bins) {rep['ece']:.2f}%")
    return "\n".join(lines)


def format_summary(s: dict, path=None) -> str:
    """A finished run's summary (summary.json's fields) as a short two-column table for the terminal."""
    def pct(key):
        return f"{s[key]:.2f}%" if s.get(key) is not None else "-"
    rows = [("run", s.get("name", "?")),
            ("model", f"{s.get('model')} ({s.get('params', 0):,} params, input {s.get('input')})"),
            ("best epoch", f"{s.get('best_epoch')} of {s.get('epochs')}, chosen on the validation split"
                           + (" (clean and corrupted: {}, weight {:g}; score {:.2f})".format(
                               "+".join(s["selection"]["corruptions"]), s["selection"]["weight"],
                               s["selection"]["val_select"]) if s.get("selection") else "")),
            ("val accuracy", f"{pct('val_accuracy')} plain, {pct('val_accuracy_tta')} flip TTA"),
            ("test accuracy", f"{pct('test_accuracy')} plain, {pct('test_accuracy_tta')} flip TTA"),
            *([("data", f"fraction {s['fraction']:g} of every split: val {s.get('val_faces', '?')} and test "
                        f"{s.get('test_faces', '?')} faces, not comparable with full-split accuracies")]
              if s.get("fraction", 1.0) < 1.0 else []),
            ("train-val gap", f"{s['gap']:+.2f} points" if s.get("gap") is not None else "-"),
            ("test macro F1", f"{s['test_macro_f1']:.2f}" if s.get("test_macro_f1") is not None else "-"),
            ("test ECE", f"{pct('test_ece')} (temperature {s['temperature']:.3f}, fitted on val)"
             if s.get("temperature") else pct("test_ece")),
            ("time", f"{s.get('wall_time_s', 0) / 60:.1f} min, {s.get('images_per_s') or 0:.0f} training images/s "
                     f"({s.get('precision')}, {s.get('device')})")]
    if path is not None:
        rows.append(("summary", str(path)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
