"""Where the packaged models live: `--model default|ensemble|ferplus|robust`, `Predictor(model=...)`.

The files are shipped as package data (pyproject: `weights/*.pt`) next to this module: `default.pt`, one
network on FER2013's 7 classes; `ensemble.pt`, several trained networks averaged (ferlab.models.ensemble), once
packaged; `ferplus.pt`, one network trained on the FER+ crowd votes, 8 classes (contempt added); `robust.pt`,
the default fine-tuned on degraded faces (noise, blur, low resolution, JPEG) for poor pictures.
This module only resolves names to paths (it imports nothing of ferlab, so anything may import it); writing
those files is `ferlab.engine.package`, run as `python -m ferlab.weights`.
"""
from __future__ import annotations

import difflib
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_WEIGHTS = HERE / "default.pt"
ENSEMBLE_WEIGHTS = HERE / "ensemble.pt"
FERPLUS_WEIGHTS = HERE / "ferplus.pt"
ROBUST_WEIGHTS = HERE / "robust.pt"
PACKAGED = ("default", "ensemble", "ferplus", "robust")


def packaged_weights(name: str) -> Path:
    """Path of a packaged model (one of PACKAGED); a clear error while it has not been shipped."""
    # looked up when called, so that the module's paths can be pointed elsewhere (tests, a custom install)
    path = {"default": DEFAULT_WEIGHTS, "ensemble": ENSEMBLE_WEIGHTS, "ferplus": FERPLUS_WEIGHTS,
            "robust": ROBUST_WEIGHTS}[name]
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
