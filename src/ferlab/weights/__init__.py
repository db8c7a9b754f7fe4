"""Where the packaged models live: `--model default|ensemble|ferplus`, `Predictor(model=...)`.

The files are shipped as package data (pyproject: `weights/*.pt`) next to this module: `default.pt`, one
network on FER2013's 7 classes; `ensemble.pt`, several trained networks averaged (ferlab.models.ensemble), once
packaged; `ferplus.pt`, one network trained on the FER+ crowd votes, 8 classes (contempt added).
"""
from __future__ import annotations

import difflib
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_WEIGHTS = HERE / "default.pt"
ENSEMBLE_WEIGHTS = HERE / "ensemble.pt"
FERPLUS_WEIGHTS = HERE / "ferplus.pt"
PACKAGED = {"default": DEFAULT_WEIGHTS, "ensemble": ENSEMBLE_WEIGHTS, "ferplus": FERPLUS_WEIGHTS}


def packaged_weights(name: str) -> Path:
    """Path of a packaged model (a key of PACKAGED); a clear error while it has not been shipped."""
    path = PACKAGED[name]
    if not path.exists():
        raise FileNotFoundError(f"the {name} model is not packaged in this ferlab: expected {path}. "
                                "Pass --model RUN_DIR, CHECKPOINT.pt or MODEL.onnx instead")
    return path


def default_weights() -> Path:
    return packaged_weights("default")


def resolve_model(spec: str | Path) -> Path:
    """A --model argument as a path: the names of PACKAGED are the packaged models, anything else a path. A
    name that is neither, but close to a packaged one ("defualt"), is a FileNotFoundError that says which."""
    if str(spec) in PACKAGED:
        return packaged_weights(str(spec))
    path = Path(spec)
    near = difflib.get_close_matches(str(spec), PACKAGED, n=1)
    if near and not path.exists():
        raise FileNotFoundError(f"unknown model {str(spec)!r}; did you mean {near[0]!r}? (a model is "
                                f"{' or '.join(map(repr, PACKAGED))}, a run folder, a .pt checkpoint or a .onnx file)")
    return path


def package_model(run: str | Path, out: str | Path = DEFAULT_WEIGHTS, classes: int | None = None) -> Path:
    """Write a run's best checkpoint as a shippable model: weights, metadata and the temperature fitted on
    the validation split (`ferlab calibrate`); no optimizer state. With `classes`, the run must predict that
    many (7: the FER2013 default; 8: the FER+ model)."""
    from ..engine.checkpoint import load_checkpoint, write_checkpoint
    from ..engine.config import config_from_saved
    from ..inference.preprocess import Preprocess
    ckpt = load_checkpoint(run)
    if classes is not None and len(ckpt["classes"]) != classes:
        raise ValueError(f"{run} predicts {len(ckpt['classes'])} classes ({', '.join(ckpt['classes'])}); this model "
                         f"must predict {classes}")
    if not ckpt.get("temperature"):
        raise ValueError(f"{run}: no temperature fitted; run `ferlab calibrate {run}` first, so the shipped "
                         "model's probabilities are calibrated")
    # preprocessing and config in their current form (a run from an older ferlab may carry removed keys)
    ckpt = {**ckpt, "optimizer": None, "scheduler": None, "source_run": str(run),
            "preprocess": Preprocess.from_dict(ckpt["preprocess"]).to_dict(),
            "config": config_from_saved(ckpt["config"]).to_dict()}
    return write_checkpoint(out, ckpt)



def package_ensemble(runs: list[str | Path], out: str | Path = ENSEMBLE_WEIGHTS, data: str | None = None,
                     device: str = "auto") -> tuple[Path, dict]:
    """Write calibrated runs as one shippable ensemble (ferlab.models.ensemble): each member keeps its own
    temperature and logit bias, and one more temperature, for the ensemble as a whole, is fitted on the
    validation split (PublicTest) under flip TTA, as the Predictor predicts. Weights are stored in fp16
    (halving the file; the float32 network they load into gives the same labels: see the README).
    Returns the file and the calibration record."""
    import torch

    from ..data import load_fer2013, make_splits
    from ..engine.calibration import calibrate_checkpoint
    from ..engine.checkpoint import FORMAT_VERSION, load_checkpoint, model_from_checkpoint, write_checkpoint
    from ..engine.trainer import resolve_device
    from ..inference.preprocess import Preprocess
    from ..models import create_model
    if len(runs) < 2:
        raise ValueError(f"an ensemble needs at least two runs, got {len(runs)}")
    ckpts = [load_checkpoint(r) for r in runs]
    first = ckpts[0]
    for run, c in zip(runs, ckpts):
        if not c.get("temperature"):
            raise ValueError(f"{run}: no temperature fitted; run `ferlab calibrate {run}` first")
        if c["classes"] != first["classes"] or Preprocess.from_dict(c["preprocess"]) != Preprocess.from_dict(
                first["preprocess"]):
            raise ValueError(f"{run}: its classes or preprocessing differ from {runs[0]}'s; an ensemble's members "
                             "see the same input and answer the same classes")
    members = [{"model": c["model"], "model_args": c["model_args"]} for c in ckpts]
    pre = Preprocess.from_dict(first["preprocess"])
    net = create_model("ensemble", num_classes=len(first["classes"]), in_channels=pre.in_channels,
                       input_size=pre.input_size, members=members)
    for i, c in enumerate(ckpts):
        member, _ = model_from_checkpoint(c, calibrated=False)  # its EMA weights where it has them
        net.members[i].load_state_dict(member.state_dict())
        net.temperatures[i] = float(c["temperature"])
        if c.get("logit_bias") is not None:
            net.biases[i] = torch.as_tensor(c["logit_bias"], dtype=torch.float32)
    ckpt = {"format": "ferlab", "format_version": FORMAT_VERSION, "model": "ensemble", "model_args": {"members": members},
            "preprocess": pre.to_dict(), "classes": list(first["classes"]), "state_dict": net.state_dict(),
            "members": [str(r) for r in runs], "config": {"split": "official", "data": first["config"].get("data")},
            "epoch": None, "best_val_acc": None, "metrics": {}}
    cfg = first.get("config") or {}
    val = make_splits(load_fer2013(data or cfg.get("data")), cfg.get("split", "official"),
                      seed=cfg.get("seed", 42))["val"]
    ckpt = calibrate_checkpoint(ckpt, torch.from_numpy(val.images), torch.from_numpy(val.labels),
                                resolve_device(device), "flip")
    ckpt["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    return write_checkpoint(out, ckpt), ckpt["calibration"]
