"""`ferlab eval`: score one checkpoint or an ensemble (averaged probabilities) on a split."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..data import CLASSES, load_fer2013, make_splits
from .checkpoint import load_checkpoint, model_from_checkpoint
from .metrics import classification_report
from .plots import plot_confusion
from .trainer import predict_probs, resolve_device


def evaluate_checkpoints(specs: list[str], split: str = "test", data: str | None = None, tta: bool = True,
                         device: str = "auto", batch_size: int = 256, blur: float | None = None) -> dict:
    """Evaluate checkpoints (run folders, .pt files or 'default') on `split`, averaging their probabilities.

    The split protocol (official / seed and its seed) comes from the first checkpoint's config, so a model
    is scored on the same held-out rows it was trained without. Returns the plain and flip-TTA reports.
    `blur` overrides the checkpoints' evaluation blur (to tune it on the validation split).
    """
    if not specs:
        raise ValueError("give at least one run folder or checkpoint to evaluate")
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be one of train, val, test; got {split!r}")
    ckpts = [load_checkpoint(s) for s in specs]
    cfg = ckpts[0]["config"]
    for s, c in zip(specs, ckpts):
        if c["classes"] != list(CLASSES):
            raise ValueError(f"{s}: classes {c['classes']} differ from FER2013's {list(CLASSES)}")
    dev = resolve_device(device)
    fer = load_fer2013(data or cfg.get("data"))
    part = make_splits(fer, cfg.get("split", "official"), seed=cfg.get("seed", 42))[split]
    images, labels = torch.from_numpy(part.images), torch.from_numpy(part.labels)
    plain = torch.zeros(len(labels), len(CLASSES))
    flipped = torch.zeros_like(plain)
    for c in ckpts:
        model, pre = model_from_checkpoint(c)
        if blur is not None:
            pre = dataclasses.replace(pre, blur=blur)
        model.to(dev)
        plain += predict_probs(model, images, pre, dev, batch_size) / len(ckpts)
        if tta:
            flipped += predict_probs(model, images, pre, dev, batch_size, tta=True) / len(ckpts)
    out = {"split": split, "protocol": cfg.get("split", "official"), "n": len(labels), "models": specs,
           "plain": classification_report(plain, labels)}
    if tta:
        out["tta"] = classification_report(flipped, labels)
    return out


def write_confusion(result: dict, out: Path) -> Path:
    rep = result["tta"] if "tta" in result else result["plain"]
    kind = "flip TTA" if "tta" in result else "plain"
    plot_confusion(rep["confusion"], CLASSES, out,
                   f"{result['split']} ({kind}): accuracy {rep['accuracy']:.2f}% over {result['n']} faces")
    return out
