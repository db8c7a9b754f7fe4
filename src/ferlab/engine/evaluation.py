"""`ferlab eval`: score one checkpoint or an ensemble (averaged probabilities) on a split."""
from __future__ import annotations

from pathlib import Path

import torch

from ..data import CLASSES, load_fer2013, make_splits
from ..data.ferplus import FERPLUS_CLASSES, has_votes, majority
from .checkpoint import load_checkpoint, model_from_checkpoint
from .crowd import compare_with_crowd
from .metrics import classification_report
from .plots import plot_confusion, plot_reliability
from .predict import predict_probs_tta, resolve_device


def evaluate_checkpoints(specs: list[str], split: str = "test", data: str | None = None, tta: bool = True,
                         device: str = "auto", batch_size: int = 256, tencrop: bool = False) -> dict:
    """Evaluate checkpoints (run folders, .pt files or 'default') on `split`, averaging their probabilities.

    The split protocol (official / seed and its seed) comes from the first checkpoint's config, so a model
    is scored on the same held-out rows it was trained without. FER2013's 7 classes are scored against FER2013's
    labels; FER+'s 8 (a model of the ferplus label modes) against the FER+ majority, on the faces that have one.
    Returns the plain, flip-TTA ("tta") and, with `tencrop`, ten-crop-TTA ("tencrop") reports; the modes share
    their forward passes.
    """
    if not specs:
        raise ValueError("give at least one run folder or checkpoint to evaluate")
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be one of train, val, test; got {split!r}")
    ckpts = [load_checkpoint(s) for s in specs]
    cfg = ckpts[0].get("config") or {}  # where its data was and how it was split; a packaged model may not say
    classes = ckpts[0]["classes"]
    if classes not in (list(CLASSES), list(FERPLUS_CLASSES)):
        raise ValueError(f"{specs[0]}: classes {classes} are neither FER2013's {list(CLASSES)} nor FER+'s "
                         f"{list(FERPLUS_CLASSES)}")
    for s, c in zip(specs, ckpts):
        if c["classes"] != classes:
            raise ValueError(f"{s}: classes {c['classes']} differ from {specs[0]}'s {classes}; an ensemble "
                             "averages models of the same classes")
    labels_of = "fer2013" if classes == list(CLASSES) else "ferplus"
    dev = resolve_device(device)
    fer = load_fer2013(data or cfg.get("data"))
    part = make_splits(fer, cfg.get("split", "official"), seed=cfg.get("seed", 42))[split]
    votes = part.votes if part.votes is not None and has_votes(part.votes).any() else None
    if labels_of == "fer2013":
        scored, labels = slice(None), torch.from_numpy(part.labels)
    else:  # the FER+ benchmark: the faces with a FER+ majority, labelled with it (as ferplus.relabel)
        if votes is None:
            raise ValueError(f"{specs[0]} is a FER+ model, scored against the FER+ majority, and these faces carry "
                             "no FER+ votes: use the Kaggle folder layout, or put fer2013new.csv beside the CSV")
        target = majority(votes)
        scored = target >= 0
        labels = torch.from_numpy(target[scored])
    images = torch.from_numpy(part.images)
    modes = ("none",) + (("flip",) if tta else ()) + (("tencrop",) if tencrop else ())
    summed = {m: torch.zeros(len(images), len(classes)) for m in modes}
    for c in ckpts:
        model, pre = model_from_checkpoint(c)
        model.to(dev)
        for m, p in predict_probs_tta(model, images, pre, dev, batch_size, modes).items():
            summed[m] += p / len(ckpts)
    out = {"split": split, "protocol": cfg.get("split", "official"), "n": len(labels), "models": specs,
           "classes": classes, "scored_against": "FER2013 labels" if labels_of == "fer2013" else "FER+ majority"}
    for m, key in (("none", "plain"), ("flip", "tta"), ("tencrop", "tencrop")):
        if m in summed:
            out[key] = classification_report(summed[m][scored], labels, classes)
            if votes is not None:  # every face of the split with votes, whatever the model's classes
                out[key]["crowd"] = compare_with_crowd(summed[m].numpy(), votes)
    return out


def write_plots(result: dict, confusion: Path) -> tuple[Path, Path]:
    """The confusion matrix at `confusion` (X.png) and the reliability diagram beside it (X_reliability.png: named
    after the file asked for, so that it never lands on a plot of the same folder that was not asked for, such as
    a run's own reliability_test.png), for the widest TTA mode evaluated."""
    key = next(k for k in ("tencrop", "tta", "plain") if k in result)
    rep, kind = result[key], {"tencrop": "ten-crop TTA", "tta": "flip TTA", "plain": "plain"}[key]
    confusion = Path(confusion)
    plot_confusion(rep["confusion"], result["classes"], confusion,
                   f"{result['split']} ({kind}): accuracy {rep['accuracy']:.2f}% over {result['n']} faces")
    rel = confusion.with_name(f"{confusion.stem}_reliability.png")
    plot_reliability(rep["reliability"], rel, f"{result['split']} ({kind}): ECE {rep['ece']:.2f}% (15 bins)")
    return confusion, rel
