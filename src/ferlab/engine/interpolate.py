"""Weight-space interpolation of two checkpoints of one network (`ferlab interpolate`).

A network fine-tuned from another (a teacher fine-tuned on degraded faces, say) stays close enough to its start
in weight space that the straight line between the two is a path of working networks. The point

    weights = (1 - alpha) * A + alpha * B

often beats both ends: on FER2013 a `vgg_m` teacher and its fine-tune on degraded faces score 69.96% and 69.38%
on clean PublicTest (flip TTA), their midpoint 70.74%, and the midpoint keeps most of the fine-tune's gain under
noise, blur and JPEG (docs/training.md, "Interpolated weights"). Each end contributes the weights it answers with
(its EMA weights where it kept them); batch-norm running statistics are interpolated like the weights; integer
buffers (batch counts) are B's. The result is a checkpoint without a temperature: calibrate it on PublicTest
(`ferlab calibrate`) before it is packaged or ensembled.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .checkpoint import answering_weights, checkpoint_path, file_sha256, load_checkpoint, write_checkpoint


def interpolate_checkpoints(a: dict, b: dict, alpha: float) -> dict:
    """The checkpoint whose weights are (1 - alpha) * a's + alpha * b's; metadata (preprocessing, classes, config)
    is b's, and no temperature is kept. The two must be one network (the same model, arguments, classes,
    preprocessing and weight shapes) trained on the same split protocol; anything else is a one-line ValueError."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha {alpha!r} is outside [0, 1]: 0 gives the first checkpoint, 1 the second")
    for key in ("model", "model_args", "classes", "preprocess"):
        if a[key] != b[key]:
            raise ValueError(f"the two checkpoints are not one network: {key} {a[key]!r} against {b[key]!r} "
                             "(interpolate a run with its own fine-tune, or two runs of one config)")
    split_a, split_b = a["config"].get("split", "official"), b["config"].get("split", "official")
    if split_a != split_b:
        raise ValueError(f"the two checkpoints were chosen on different validation splits ({split_a!r} and "
                         f"{split_b!r}); their interpolation would have no held-out split to be calibrated on")
    sa, sb = answering_weights(a), answering_weights(b)
    if sa.keys() != sb.keys():
        only = sorted(set(sa) ^ set(sb))
        raise ValueError(f"the two checkpoints hold different weights ({', '.join(only[:3])}"
                         f"{' ...' if len(only) > 3 else ''} in one only)")
    state = {}
    for name, tb in sb.items():
        ta = sa[name]
        if ta.shape != tb.shape:
            raise ValueError(f"weight {name} has shape {tuple(ta.shape)} in the first checkpoint and "
                             f"{tuple(tb.shape)} in the second")
        if tb.is_floating_point():
            mixed = torch.lerp(ta.float(), tb.float(), alpha)
            state[name] = mixed.to(torch.float32 if tb.dtype == torch.float16 else tb.dtype)
        else:
            state[name] = tb.clone()
    return {**b, "state_dict": state, "ema_state_dict": None, "optimizer": None, "scheduler": None,
            "epoch": None, "best_val_acc": None, "metrics": {}, "temperature": None, "calibration": None,
            "logit_bias": None, "source_run": None}


def interpolate_runs(first: str | Path, second: str | Path, alpha: float, out: str | Path) -> Path:
    """Write the interpolation of two runs (folders or .pt files) as a new run folder `out` holding best.pt and
    interpolation.json (both ends, their SHA-256 and alpha; for an end that is an interpolation itself, its record
    too). `out` must not exist yet, or be an empty folder: a run already there is never overwritten. Returns the
    checkpoint's path."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not an empty folder; give a new folder for the "
                         "interpolated run")
    paths = [checkpoint_path(first), checkpoint_path(second)]
    ends = [load_checkpoint(p) for p in paths]
    ckpt = interpolate_checkpoints(ends[0], ends[1], alpha)
    record = {"first": str(first), "second": str(second), "alpha": alpha,
              "first_sha256": file_sha256(paths[0]), "second_sha256": file_sha256(paths[1])}
    for side, end in zip(("first", "second"), ends):  # an end that is itself an interpolation: its record too,
        if end.get("interpolation"):                   # so a chain of them names every checkpoint it mixed
            record[f"{side}_interpolation"] = end["interpolation"]
    ckpt["interpolation"] = record
    out.mkdir(parents=True, exist_ok=True)
    path = write_checkpoint(out / "best.pt", ckpt)
    (out / "interpolation.json").write_text(json.dumps(record, indent=2) + "\n")
    return path
