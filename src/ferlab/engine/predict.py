"""A network's outputs over uint8 faces: the device, the precision, and the views test-time augmentation
averages. Shared by the training loop's evaluation, calibration, `ferlab eval`, packaging and the Predictor,
so they all see a face, and its mirror, the same way."""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from ..data.classes import CLASSES
from ..inference.preprocess import Preprocess, to_model_input


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" (CUDA when there is one, else the CPU) or a torch device name; CUDA asked for without CUDA is an
    error rather than a silent fall back to the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use device=cpu")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware. A CPU without AVX512-BF16 or AMX emulates it: measured on an
    AVX2 EPYC core, vgg_s trained at 6 images/s under bf16 autocast against 80 in fp32 (bench/train_speed.py). A
    CPU whose support cannot be read counts as native (the config is honoured)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return True
    return True


def run_precision(device: torch.device, precision: str) -> str:
    """The precision a run computes in: the config's, except bf16 on a device that only emulates it (fp32)."""
    return "fp32" if precision == "bf16" and not native_bf16(device) else precision


def autocast(device: torch.device, precision: str):
    """The forward pass's precision: bf16 autocast, or as the weights are (fp32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


TTA_MODES = {"none": 1, "flip": 2, "tencrop": 10}  # mode -> number of views, in the order tta_views gives them


def tta_views(x: torch.Tensor, mode: str, shift: float = 0.06) -> list[torch.Tensor]:
    """The views a TTA mode averages over, for a normalised batch (N, C, S, S).

    "none": the face; "flip": it and its mirror; "tencrop": ten-crop of the face padded by `shift` of its
    side (border pixels, as the training augmentation pads): centre and four corners, each also mirrored,
    i.e. the centre plus the four diagonal shifts a model trained on random crops with padding has seen.
    The list starts with the face and its mirror, so the modes nest: none < flip < tencrop.
    """
    mode = _tta_mode(mode)
    views = [x] if mode == "none" else [x, x.flip(-1)]
    if mode == "tencrop":
        s = x.shape[-1]
        d = max(1, round(shift * s))
        padded = F.pad(x, (d, d, d, d), mode="replicate")
        corners = [padded[..., i:i + s, j:j + s] for i in (0, 2 * d) for j in (0, 2 * d)]
        views += corners + [c.flip(-1) for c in corners]
    return views


def _tta_mode(tta: bool | str) -> str:
    """A TTA mode name from a mode or a bool (True = flip); an unknown mode is an error."""
    mode = {True: "flip", False: "none"}.get(tta, tta)
    if mode not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}; got {tta!r}")
    return mode


@torch.no_grad()
def predict_view_logits(model, images: torch.Tensor, pre: Preprocess, device: torch.device, batch_size: int = 256,
                        mode: str = "none", precision: str = "fp32", channels_last: bool = False) -> torch.Tensor:
    """Logits (views, N, classes) of uint8 faces, one row per view of TTA `mode`, in `tta_views` order."""
    mode = _tta_mode(mode)
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = to_model_input(images[i:i + batch_size], pre, device)
        views = []
        for v in tta_views(x, mode):
            if channels_last:
                v = v.contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                views.append(model(v).float().cpu())
        out.append(torch.stack(views))
    return torch.cat(out, 1) if out else torch.empty(TTA_MODES[mode], 0, len(CLASSES))


def predict_probs_tta(model, images: torch.Tensor, pre: Preprocess, device: torch.device, batch_size: int = 256,
                      modes: tuple[str, ...] = ("none",), precision: str = "fp32",
                      channels_last: bool = False) -> dict[str, torch.Tensor]:
    """Softmax probabilities (N, classes) for uint8 faces under each TTA mode, sharing forward passes."""
    modes = tuple(_tta_mode(m) for m in modes)
    widest = max(modes, key=TTA_MODES.__getitem__)
    probs = predict_view_logits(model, images, pre, device, batch_size, widest, precision, channels_last).softmax(-1)
    return {m: probs[:TTA_MODES[m]].mean(0) for m in modes}


def predict_probs(model, images: torch.Tensor, pre: Preprocess, device: torch.device, batch_size: int = 256,
                  tta: bool | str = False, precision: str = "fp32", channels_last: bool = False) -> torch.Tensor:
    """Softmax probabilities (N, classes) for uint8 faces; tta: False/"none", True/"flip" or "tencrop"."""
    mode = _tta_mode(tta)
    return predict_probs_tta(model, images, pre, device, batch_size, (mode,), precision, channels_last)[mode]
