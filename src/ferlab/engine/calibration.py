"""Calibrated probabilities: one temperature, fitted on the validation split (PublicTest), kept in the checkpoint.

A network trained with cross-entropy (and label smoothing) is rarely calibrated: a face it calls "happy, 0.9"
is not right 90% of the time. Dividing the logits by one temperature T, fitted to minimise the negative
log-likelihood on held-out faces, fixes most of that without changing a single prediction (Guo et al., 2017).
The checkpoint stores T; `model_from_checkpoint` returns the network with it applied, so every consumer
(evaluation, `Predictor`, the REST server, ONNX export) gives the same calibrated probabilities.

Optionally (`ferlab calibrate --min-recall disgust=45`) a logit adjustment comes first: logits - tau x log(prior),
with the class prior of the training split (Menon et al., 2021, "Long-tail learning via logit adjustment"). It
moves decisions towards rare classes (FER2013 has 436 disgust faces of 28,709); tau is the smallest value on a
grid at which every named class reaches its recall on the validation split. Then T is fitted on top of it.
"""
from __future__ import annotations

import numpy as np
import torch

from ..models.temperature import TemperatureScaled  # noqa: F401  (applies what is fitted here; importable here too)
from ..weights import PACKAGED
from .checkpoint import checkpoint_path, load_checkpoint, model_from_checkpoint, write_checkpoint
from .predict import predict_view_logits, resolve_device

ECE_BINS = 15


def _nll(view_logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean NLL of the view-averaged softmax(logits / T): the probabilities a TTA prediction reports."""
    probs = (view_logits.double() / temperature).softmax(-1).mean(0)
    return float(-probs[torch.arange(len(labels)), labels].clamp_min(1e-12).log().mean())


def fit_temperature(view_logits: torch.Tensor, labels: torch.Tensor, lo: float = 0.05, hi: float = 20.0) -> float:
    """The T > 0 that minimises the NLL of softmax(logits / T), averaged over TTA views.

    view_logits: (V, N, C) logits of V views (1 without TTA) of N faces. A log-spaced grid, then a golden-section
    search in the best cell: the NLL in log T is smooth and has one minimum.
    """
    if view_logits.ndim == 2:
        view_logits = view_logits[None]
    if view_logits.ndim != 3 or view_logits.shape[1] != len(labels) or len(labels) == 0:
        raise ValueError(f"expected logits (views, N, classes) for {len(labels)} labels, got {tuple(view_logits.shape)}")
    grid = np.geomspace(lo, hi, 61)
    losses = [_nll(view_logits, labels, t) for t in grid]
    i = int(np.argmin(losses))
    a, b = np.log(grid[max(i - 1, 0)]), np.log(grid[min(i + 1, len(grid) - 1)])
    g = (np.sqrt(5) - 1) / 2
    for _ in range(30):  # shrinks the cell 0.618^30 ~ 5e-7 times
        c, d = b - g * (b - a), a + g * (b - a)
        if _nll(view_logits, labels, np.exp(c)) < _nll(view_logits, labels, np.exp(d)):
            b = d
        else:
            a = c
    return float(np.exp((a + b) / 2))


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> dict:
    """Per confidence bin (equal width over [0, 1]): mean confidence, accuracy and count of the top class."""
    conf, pred = probs.max(1)
    right = (pred == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=conf.dtype)
    which = torch.bucketize(conf, edges[1:-1], right=True)  # bin i holds (edge_i, edge_i+1]
    count = torch.bincount(which, minlength=bins).double()
    mean_conf = torch.bincount(which, conf.double(), minlength=bins) / count.clamp_min(1)
    acc = torch.bincount(which, right, minlength=bins) / count.clamp_min(1)
    return {"edges": edges.tolist(), "confidence": mean_conf.tolist(), "accuracy": acc.tolist(),
            "count": count.long().tolist()}


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE in percent: the count-weighted mean |accuracy - confidence| over `bins` equal-width bins."""
    r = reliability(probs, labels, bins)
    n = max(sum(r["count"]), 1)
    return 100 * sum(c * abs(a - p) for c, a, p in zip(r["count"], r["accuracy"], r["confidence"])) / n


TAUS = tuple(round(0.05 * i, 2) for i in range(41))  # logit-adjustment strengths tried, 0 to 2


def recall(probs: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Recall of class k in percent."""
    sel = labels == k
    return float(100 * (probs[sel].argmax(1) == k).float().mean()) if sel.any() else float("nan")


def fit_logit_adjustment(view_logits: torch.Tensor, labels: torch.Tensor, prior: torch.Tensor,
                         min_recall: dict[int, float]) -> float:
    """The smallest tau in TAUS at which softmax(logits - tau log prior), view-averaged, gives every class k
    in `min_recall` at least that recall (percent) on (logits, labels); ValueError if none does."""
    log_prior = prior.double().clamp_min(1e-12).log()
    for tau in TAUS:
        probs = (view_logits.double() - tau * log_prior).softmax(-1).mean(0)
        if all(recall(probs, labels, k) >= r for k, r in min_recall.items()):
            return tau
    raise ValueError(f"no logit adjustment up to tau={TAUS[-1]} reaches the asked recall on the validation "
                     f"split ({min_recall}); ask for less")


def calibrate_checkpoint(ckpt: dict, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
                         tta: str = "flip", batch_size: int = 256, min_recall: dict[str, float] | None = None,
                         prior: torch.Tensor | None = None) -> dict:
    """`ckpt` with a temperature fitted on (images, labels), the validation split, for predictions made
    under `tta` ("none" or "flip", as the Predictor makes them), and a record of what it changed there.

    With `min_recall` ({class name: percent}) and `prior` (the training split's class frequencies), a logit
    adjustment -tau log(prior) is fitted first (see the module's notes) and stored as the checkpoint's
    `logit_bias`.
    """
    model, pre = model_from_checkpoint(ckpt, calibrated=False)
    logits = predict_view_logits(model.to(device), images, pre, device, batch_size, tta)
    before = logits.softmax(-1).mean(0)
    bias, tau = None, 0.0
    if min_recall:
        classes = list(ckpt["classes"])
        unknown = [c for c in min_recall if c not in classes]
        if unknown or prior is None:
            raise ValueError(f"min_recall needs known classes ({', '.join(classes)}) and the training prior; "
                             f"got {list(min_recall)}")
        tau = fit_logit_adjustment(logits, labels, prior, {classes.index(c): r for c, r in min_recall.items()})
        bias = (-tau * prior.double().clamp_min(1e-12).log()).float()
        logits = logits + bias
    t = fit_temperature(logits, labels)
    after = (logits / t).softmax(-1).mean(0)
    record = {"split": "val", "tta": tta, "faces": len(labels), "temperature": t,
              "nll_before": _nll(logits if bias is None else logits - bias, labels, 1.0),
              "nll_after": _nll(logits, labels, t),
              "ece_before": expected_calibration_error(before, labels),
              "ece_after": expected_calibration_error(after, labels),
              "logit_adjustment_tau": tau, "min_recall": dict(min_recall or {}),
              "val_recall_before": [recall(before, labels, k) for k in range(before.shape[1])],
              "val_recall_after": [recall(after, labels, k) for k in range(after.shape[1])]}
    out = {**ckpt, "temperature": t, "calibration": record}
    out["logit_bias"] = bias.tolist() if bias is not None else None
    return out


def calibrate_run(spec: str, data: str | None = None, device: str = "auto", tta: str = "flip",
                  min_recall: dict[str, float] | None = None):
    """`ferlab calibrate`: fit a run's (or .pt file's) temperature, and with `min_recall` its logit adjustment,
    on the validation split of the protocol it was trained with, and write it back into that file.
    Returns (the file, the updated checkpoint)."""
    from ..data import load_fer2013, make_splits
    from ..data.ferplus import relabel
    if str(spec) in PACKAGED:
        raise ValueError(f"the packaged {spec} model is calibrated when it is packaged: calibrate its run folders, "
                         "then package them with python -m ferlab.weights")
    path = checkpoint_path(spec)
    ckpt = load_checkpoint(path)
    cfg = ckpt["config"]
    splits = relabel(make_splits(load_fer2013(data or cfg.get("data")), cfg.get("split", "official"),
                                 seed=cfg.get("seed", 42), fraction=cfg.get("fraction", 1.0)),
                     cfg.get("labels", "fer2013"))  # a FER+ model: fitted against the FER+ majority
    val, train = splits["val"], splits["train"]
    prior = torch.bincount(torch.from_numpy(train.labels.astype("int64")), minlength=len(ckpt["classes"])).double()
    ckpt = calibrate_checkpoint(ckpt, torch.from_numpy(val.images), torch.from_numpy(val.labels),
                                resolve_device(device), tta, min_recall=min_recall, prior=prior / prior.sum())
    write_checkpoint(path, ckpt)
    return path, ckpt
