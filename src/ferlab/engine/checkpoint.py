"""Self-describing checkpoints: everything needed to rebuild, use or resume a model, loadable with
`torch.load(..., weights_only=True)` (only tensors, numbers, strings, lists and dicts inside)."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch

from .._atomic import replacing
from ..data.classes import CLASSES
from ..inference.preprocess import Preprocess
from ..models import create_model
from ..models.temperature import TemperatureScaled
from ..weights import resolve_model

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, *, model, model_name: str, model_args: dict, pre: Preprocess,
                    config: dict, epoch: int, best_val_acc: float, metrics: dict | None = None,
                    optimizer=None, scheduler=None, ema_state: dict | None = None, extra: dict | None = None,
                    classes=CLASSES):
    """`classes`: the names of the model's outputs, in order (FER2013's 7, or FER+'s 8 for its label modes)."""
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    ckpt = {
        "format": "ferlab", "format_version": FORMAT_VERSION,
        "model": model_name, "model_args": dict(model_args), "preprocess": pre.to_dict(),
        "classes": list(classes), "config": config, "epoch": epoch, "best_val_acc": best_val_acc,
        "metrics": metrics or {}, "state_dict": state,
        "ema_state_dict": ema_state,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        **(extra or {}),
    }
    write_checkpoint(path, ckpt)


def write_checkpoint(path: str | Path, ckpt: dict) -> Path:
    """torch.save through a temporary file: an interruption or a full disk never leaves a half-written
    checkpoint, and a failed write is one WriteError naming the file."""
    path = Path(path)
    with replacing(path) as tmp, open(tmp, "wb") as f:  # a buffered file: it writes all it is given or raises
        try:
            torch.save(ckpt, f)
        except RuntimeError as e:
            # a write failed (disk full) and torch, closing its zip on the way out, raised "[enforce fail ...]
            # unexpected pos" instead: the OSError that says why is that error's context
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None
            raise
    return path


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(2**20):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_path(spec: str | Path) -> Path:
    """The file behind a checkpoint argument: a .pt file, a run folder (its best.pt) or "default"."""
    path = resolve_model(spec)  # "default" is the packaged model
    if path.is_dir():
        for cand in (path / "best.pt", path / "weights" / "best.pt"):
            if cand.exists():
                path = cand
                break
        else:
            raise FileNotFoundError(f"{path}: a run folder must contain best.pt")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found")
    if path.suffix == ".onnx":
        raise ValueError(f"{path}: an ONNX export, which holds no PyTorch checkpoint: give the run folder or the .pt "
                         "checkpoint it was exported from")
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a ferlab checkpoint: a .pt file, a run folder (its best.pt) or "default". It is checked whole (its
    format version, its parts, finite weights that build its network): a damaged one is one ValueError that
    names the file and what is wrong."""
    path = checkpoint_path(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, corrupt, or pickled code that weights_only refuses: never load it unsafely
        # (torch's own message advises weights_only=False, which would run a stranger's code: not repeated here)
        raise ValueError(f"{path}: not a readable ferlab checkpoint ({type(e).__name__}): it is truncated or "
                         "corrupt, or holds pickled code, which ferlab never loads. Use a checkpoint that a "
                         "ferlab run wrote") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != "ferlab":
        raise ValueError(f"{path}: not a ferlab checkpoint (expected a dict with format='ferlab')")
    problem = damage(ckpt)
    if problem:
        raise ValueError(f"{path}: {problem}")
    return ckpt


PARTS = {"model": str, "model_args": dict, "preprocess": dict, "classes": list, "state_dict": dict}


def damage(ckpt: dict) -> str | None:
    """What keeps a checkpoint dict from being used, in a few words, or None when nothing does."""
    version = ckpt.get("format_version")
    if version != FORMAT_VERSION:
        return (f"checkpoint format_version {version!r}, which this ferlab does not read (it reads version "
                f"{FORMAT_VERSION}); was it written by a newer ferlab? Upgrade ferlab to use it")
    missing = [k for k in PARTS if ckpt.get(k) is None]
    if missing:
        return f"damaged checkpoint: no {' and no '.join(missing)} (a ferlab checkpoint holds {', '.join(PARTS)})"
    wrong = [f"{k} is a {type(ckpt[k]).__name__}, not a {kind.__name__}" for k, kind in PARTS.items()
             if not isinstance(ckpt[k], kind)]
    if wrong:
        return f"damaged checkpoint: {'; '.join(wrong)}"
    for part in ("state_dict", "ema_state_dict"):
        for name, t in (ckpt.get(part) or {}).items():
            if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return (f"weights not finite: {part} {name}: {int((~torch.isfinite(t)).sum())} of {t.numel()} "
                        "values are NaN or infinite (did the training diverge?); a model with such weights "
                        "answers NaN, so ferlab does not load it")
    t = ckpt.get("temperature")
    if t is not None and not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
        return f"temperature {t!r} is not a finite number > 0: fit it again with `ferlab calibrate`"
    bias = ckpt.get("logit_bias")
    if bias is not None and not bool(torch.isfinite(torch.as_tensor(bias, dtype=torch.float64)).all()):
        return f"logit_bias {bias!r} is not finite: fit it again with `ferlab calibrate --min-recall ...`"
    try:
        Preprocess.from_dict(ckpt["preprocess"])
    except (KeyError, TypeError, ValueError) as e:
        return f"preprocess {ckpt['preprocess']!r} is not readable ({type(e).__name__}: {e})"
    try:
        model_from_checkpoint(ckpt)  # builds its network and loads the weights it will use
    except ValueError as e:
        return str(e)
    return None


def answering_weights(ckpt: dict) -> dict:
    """The weights a checkpoint answers with: its EMA weights where the run kept them, else its state_dict."""
    return ckpt.get("ema_state_dict") or ckpt["state_dict"]


def model_from_checkpoint(ckpt: dict, use_ema: bool = True,
                          calibrated: bool = True) -> tuple[torch.nn.Module, Preprocess]:
    """Rebuild the network in eval mode and its preprocessing from a checkpoint dict.

    With `calibrated` and a fitted temperature in the checkpoint (`ferlab calibrate`), the network's logits
    come divided by it, so its softmax gives calibrated probabilities. Model arguments or weights that do not
    fit the network are a one-line ValueError.
    """
    pre = Preprocess.from_dict(ckpt["preprocess"])
    try:
        model = create_model(ckpt["model"], num_classes=len(ckpt["classes"]), in_channels=pre.in_channels,
                             input_size=pre.input_size, **ckpt["model_args"])
    except TypeError as e:
        raise ValueError(f"model_args {ckpt['model_args']!r} do not fit model {ckpt['model']!r} ({e})") from None
    state = ckpt["ema_state_dict"] if use_ema and ckpt.get("ema_state_dict") else ckpt["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # missing or unexpected keys, other shapes: torch says so over many lines
        said = " ".join(str(e).split())
        raise ValueError(f"its weights do not fit its {ckpt['model']!r} network ("
                         f"{said if len(said) <= 300 else said[:300] + ' ...'})") from None
    if calibrated and ckpt.get("temperature"):
        model = TemperatureScaled(model, ckpt["temperature"], ckpt.get("logit_bias"))
    return model.eval(), pre
