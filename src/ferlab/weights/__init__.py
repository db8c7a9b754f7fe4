"""Where the packaged model lives: `ferlab predict --model default` and `Predictor(model="default")`.

The file is shipped as package data (pyproject: `weights/*.pt`) next to this module.
"""
from __future__ import annotations

from pathlib import Path

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "default.pt"


def default_weights() -> Path:
    """Path of the packaged default checkpoint; a clear error while it has not been shipped."""
    if not DEFAULT_WEIGHTS.exists():
        raise FileNotFoundError(f"the default model is not packaged yet: expected {DEFAULT_WEIGHTS}. "
                                "Pass --model RUN_DIR, CHECKPOINT.pt or MODEL.onnx instead")
    return DEFAULT_WEIGHTS


def resolve_model(spec: str | Path) -> Path:
    """A --model argument as a path: "default" is the packaged checkpoint, anything else a path as given."""
    return default_weights() if str(spec) == "default" else Path(spec)


def package_model(run: str | Path, out: str | Path = DEFAULT_WEIGHTS) -> Path:
    """Write a run's best checkpoint as a shippable model: weights, metadata and the temperature fitted on
    the validation split (`ferlab calibrate`); no optimizer state."""
    from ..engine.checkpoint import load_checkpoint, write_checkpoint
    from ..engine.config import config_from_saved
    from ..inference.preprocess import Preprocess
    ckpt = load_checkpoint(run)
    if not ckpt.get("temperature"):
        raise ValueError(f"{run}: no temperature fitted; run `ferlab calibrate {run}` first, so the shipped "
                         "model's probabilities are calibrated")
    # preprocessing and config in their current form (a run from an older ferlab may carry removed keys)
    ckpt = {**ckpt, "optimizer": None, "scheduler": None, "source_run": str(run),
            "preprocess": Preprocess.from_dict(ckpt["preprocess"]).to_dict(),
            "config": config_from_saved(ckpt["config"]).to_dict()}
    return write_checkpoint(out, ckpt)

