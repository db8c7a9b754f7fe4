"""The one preprocessing path: grayscale face crops -> model input, driven by checkpoint metadata.

Training-time evaluation, prediction, ONNX export and serving all call `to_model_input`, so the
pixels a deployed model sees are produced exactly the way its validation pixels were.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Preprocess:
    input_size: int = 48
    in_channels: int = 1
    mean: tuple[float, ...] = (0.5077,)
    std: tuple[float, ...] = (0.2166,)
    # Per-face standardisation (zero mean, unit variance per image) before the global mean/std: makes the
    # model blind to each face's brightness and contrast, which vary widely between photos and cameras.
    standardize: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        if float(d.get("blur", 0.0)) > 0:  # written by ferlab <= 0.7 for a FER2013 copy with blurred Training faces
            raise ValueError(f"this model blurs every face (sigma {d['blur']}) to match a degraded FER2013 copy "
                             "whose Training faces were blurred; it is void: retrain it on the clean data")
        return cls(int(d["input_size"]), int(d["in_channels"]), tuple(d["mean"]), tuple(d["std"]),
                   bool(d.get("standardize", False)))


def to_model_input(faces, pre: Preprocess, device: str | torch.device | None = None) -> torch.Tensor:
    """uint8 grayscale faces (N, H, W) (numpy or tensor) -> normalised float (N, C, S, S).

    Resizing is bilinear with antialiasing; a single-channel face is repeated to `in_channels` (the seed
    fed grayscale copied into RGB); then (x/255 - mean) / std.
    """
    x = _resize(_as_faces(faces).to(device=device, dtype=torch.float32).unsqueeze(1) / 255.0, pre.input_size)
    if pre.standardize:
        x = (x - x.mean((2, 3), keepdim=True)) / (x.std((2, 3), keepdim=True) + 1e-3)
    return normalize(x.expand(-1, pre.in_channels, -1, -1), pre)


def to_model_pixels(faces, pre: Preprocess) -> torch.Tensor:
    """uint8 grayscale faces (N, H, W) -> uint8 (N, S, S): resized as `to_model_input` resizes them, then
    rounded to whole grey levels. What an ONNX export (which holds the rest of the preprocessing) takes."""
    x = _as_faces(faces)
    if x.shape[-2:] == (pre.input_size, pre.input_size):
        return x.to(torch.uint8)
    x = _resize(x.to(torch.float32).unsqueeze(1) / 255.0, pre.input_size)[:, 0]
    return (x * 255.0).round().clamp(0, 255).to(torch.uint8)


def _as_faces(faces) -> torch.Tensor:
    """Grayscale faces (N, H, W) or one (H, W), numpy or tensor -> a tensor (N, H, W); integers as uint8."""
    x = torch.as_tensor(np.asarray(faces) if not torch.is_tensor(faces) else faces)
    if x.dtype != torch.uint8 and x.dtype.is_floating_point is False:
        x = x.to(torch.uint8)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"expected grayscale faces of shape (N, H, W) or (H, W), got {tuple(x.shape)}")
    return x


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 1, H, W) float -> (N, 1, size, size): bilinear, antialiased when shrinking."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)


def normalize(x: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """(x - mean) / std with the per-channel statistics stored in the model's metadata."""
    mean = torch.tensor(pre.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std
