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
