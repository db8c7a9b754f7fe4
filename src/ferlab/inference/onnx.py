"""ONNX export with the preprocessing and class names embedded, checked against PyTorch on real faces.

The graph maps model input (N, C, S, S), as `to_model_input` makes it, to softmax probabilities, with a
dynamic batch axis. Crop, grayscale, resize and normalisation stay outside the graph and are driven by
the `ferlab.preprocess` metadata, so ONNX Runtime sees the same pixels as PyTorch.
"""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from ..data import load_fer2013
from ..engine.checkpoint import load_checkpoint, model_from_checkpoint
from ..weights import resolve_model
from .preprocess import Preprocess, to_model_input

PARITY_TOL = 1e-4
INPUT, OUTPUT = "input", "probs"


class _WithSoftmax(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).softmax(1)


class _MatmulAdaptiveAvgPool2d(torch.nn.Module):
    """AdaptiveAvgPool2d as two matrix products, which ONNX exports for any size ratio.

    The TorchScript exporter refuses adaptive pooling whose output size does not divide the input size
    (vgg_s at 32 px pools a 2x2 map to 3x3); the pooling matrices below give the same numbers.
    """

    def __init__(self, output_size):
        super().__init__()
        self.out = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)

    @staticmethod
    def _matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
        m = torch.zeros(n_out, n_in, dtype=like.dtype)
        for i in range(n_out):
            lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
            m[i, lo:hi] = 1.0 / (hi - lo)
        return m

    def forward(self, x):
        h, w = int(x.shape[-2]), int(x.shape[-1])
        oh, ow = (h if self.out[0] is None else self.out[0]), (w if self.out[1] is None else self.out[1])
        return self._matrix(h, oh, x) @ x @ self._matrix(w, ow, x).T


def _exportable(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` with its adaptive average pools swapped for exportable matrix products."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.AdaptiveAvgPool2d):
                setattr(module, child_name, _MatmulAdaptiveAvgPool2d(child.output_size))
    return model


def real_faces(data: str | Path | None, n: int = 64) -> np.ndarray:
    """`n` real FER2013 faces (uint8 (n, 48, 48)) spread evenly over the dataset, for parity checks."""
    try:
        faces = load_fer2013(data).images
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"export checks ONNX against PyTorch on real FER2013 faces and needs the data: {e}") from e
    return faces[np.linspace(0, len(faces) - 1, min(n, len(faces))).astype(int)]


def export_onnx(checkpoint: str | Path, out: str | Path | None = None, data: str | Path | None = None,
                opset: int = 17, n_check: int = 64) -> dict:
    """Write `checkpoint` (run folder, .pt or "default") as ONNX and verify it; returns a report dict.

    The check runs `n_check` real faces (from `data`, else the run's data, else $FERLAB_DATA) through
    both runtimes at batch 1 and at full batch; if any probability differs by more than PARITY_TOL the
    file is removed and RuntimeError raised.
    """
    src = resolve_model(checkpoint)
    ckpt = load_checkpoint(src)
    model, pre = model_from_checkpoint(ckpt)
    out = Path(out) if out else (src / "model.onnx" if src.is_dir() else src.with_suffix(".onnx"))
    faces = real_faces(data or ckpt["config"].get("data"), n_check)  # fail before writing anything

    x = to_model_input(faces[:2], pre)
    with warnings.catch_warnings():
        # the TorchScript exporter: the torch.export one needs onnxscript, which ferlab does not depend on
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the pools' sizes are fixed by design
        try:
            torch.onnx.export(_WithSoftmax(_exportable(model)), (x,), str(out), dynamo=False,
                              opset_version=opset, input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
        except Exception:
            out.unlink(missing_ok=True)
            raise
    import onnx
    proto = onnx.load(str(out))
    meta = {"ferlab.preprocess": json.dumps(pre.to_dict()), "ferlab.classes": json.dumps(list(ckpt["classes"])),
            "ferlab.model": ckpt["model"], "ferlab.model_args": json.dumps(ckpt["model_args"]),
            "ferlab.epoch": str(ckpt["epoch"]), "ferlab.best_val_acc": str(ckpt["best_val_acc"])}
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))

    try:
        diff = parity(model, OnnxClassifier(out), faces, pre)
    except Exception:
        out.unlink(missing_ok=True)
        raise
    if not diff <= PARITY_TOL:
        out.unlink(missing_ok=True)
        raise RuntimeError(f"ONNX export of {checkpoint} disagrees with PyTorch: max |p_onnx - p_torch| = "
                           f"{diff:.2e} on {len(faces)} real faces (allowed {PARITY_TOL:.0e}); nothing written")
    return {"path": str(out), "faces_checked": len(faces), "max_abs_diff": diff, "opset": opset,
            "bytes": out.stat().st_size}


@torch.no_grad()
def parity(model: torch.nn.Module, onnx_model: "OnnxClassifier", faces: np.ndarray, pre: Preprocess) -> float:
    """Largest |probability difference| between PyTorch and ONNX Runtime over `faces`, batch 1 and full."""
    x = to_model_input(faces, pre)
    ref = model.eval()(x).softmax(1).numpy()
    full = onnx_model(x)
    single = np.concatenate([onnx_model(x[i:i + 1]) for i in range(len(x))])
    return float(max(np.abs(full - ref).max(), np.abs(single - ref).max()))


class OnnxClassifier:
    """An exported model under ONNX Runtime: model input (N, C, S, S) -> probabilities (N, classes)."""

    def __init__(self, path: str | Path, threads: int = 0):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if "ferlab.preprocess" not in meta or "ferlab.classes" not in meta:
            raise ValueError(f"{path}: not a ferlab ONNX export (metadata ferlab.preprocess / ferlab.classes "
                             f"missing; found keys: {', '.join(sorted(meta)) or 'none'})")
        self.pre = Preprocess.from_dict(json.loads(meta["ferlab.preprocess"]))
        self.classes = tuple(json.loads(meta["ferlab.classes"]))
        self.name = meta.get("ferlab.model", Path(path).stem)

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        return self.session.run([OUTPUT], {INPUT: x.detach().cpu().numpy().astype(np.float32)})[0]
