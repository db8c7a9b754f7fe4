"""Self-describing checkpoints: everything needed to rebuild, use or resume a model, loadable with
`torch.load(..., weights_only=True)` (only tensors, numbers, strings, lists and dicts inside)."""
from __future__ import annotations

from pathlib import Path

import torch

from .._atomic import replacing
from ..data.classes import CLASSES
from ..inference.preprocess import Preprocess
from ..models import create_model
from .calibration import TemperatureScaled

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, *, model, model_name: str, model_args: dict, pre: Preprocess,
                    config: dict, epoch: int, best_val_acc: float, metrics: dict | None = None,
                    optimizer=None, scheduler=None, ema_state: dict | None = None, extra: dict | None = None):
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    ckpt = {
        "format": "ferlab", "format_version": FORMAT_VERSION,
        "model": model_name, "model_args": dict(model_args), "preprocess": pre.to_dict(),
        "classes": list(CLASSES), "config": config, "epoch": epoch, "best_val_acc": best_val_acc,
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


def checkpoint_path(spec: str | Path) -> Path:
    """The file behind a checkpoint argument: a .pt file, a run folder (its best.pt) or "default"."""
    from ..weights import resolve_model
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
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a ferlab checkpoint: a .pt file, a run folder (its best.pt) or "default"."""
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
    return ckpt


def model_from_checkpoint(ckpt: dict, use_ema: bool = True,
                          calibrated: bool = True) -> tuple[torch.nn.Module, Preprocess]:
    """Rebuild the network in eval mode and its preprocessing from a checkpoint dict.

    With `calibrated` and a fitted temperature in the checkpoint (`ferlab calibrate`), the network's logits
    come divided by it, so its softmax gives calibrated probabilities.
    """
    pre = Preprocess.from_dict(ckpt["preprocess"])
    model = create_model(ckpt["model"], num_classes=len(ckpt["classes"]), in_channels=pre.in_channels,
                         input_size=pre.input_size, **ckpt["model_args"])
    state = ckpt["ema_state_dict"] if use_ema and ckpt.get("ema_state_dict") else ckpt["state_dict"]
    model.load_state_dict(state)
    if calibrated and ckpt.get("temperature"):
        model = TemperatureScaled(model, ckpt["temperature"], ckpt.get("logit_bias"))
    return model.eval(), pre
