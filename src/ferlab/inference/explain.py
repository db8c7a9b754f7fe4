"""Class activation maps: which regions of a face drove its label.

For the class a face was given, the gradient of that class's logit with respect to the last convolutional
feature map is combined with the map itself, and the result, through a ReLU, is upsampled to the model's
input. Two ways to combine them:

- "hirescam" (the default; Draelos & Carin, 2020): gradient times activation at each location, summed over
  channels. For a head that flattens the map into linear layers, as ferlab's VGG-style models do, this is
  each location's own share of the logit (exactly so for a linear head), so the map is faithful.
- "gradcam" (Selvaraju et al., 2017): each channel weighted by its gradient averaged over the map. Exact for
  heads that average the map first (ResNets); for a flattening head the average mixes locations, and on the
  shipped model the weighted sum came out negative over the whole face (a blank map).

Maps are computed for the label ferlab reports, so they explain the answer the user sees.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .draw import draw_faces


def cam_layer(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """The module whose output Grad-CAM reads: the last one to produce a 4-D map at the resolution of the
    network's last convolution (for VGG-style nets its final ReLU; for ResNets its last residual block)."""
    done: list[tuple[torch.nn.Module, tuple]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: done.append((m, tuple(o.shape))) if torch.is_tensor(o) else None)
             for m in model.modules()]
    try:
        with torch.no_grad():
            model.eval()(x[:1])
    finally:
        for h in hooks:
            h.remove()
    convs = [shape for m, shape in done if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        raise ValueError(f"Grad-CAM needs a convolutional network; {type(model).__name__} has no Conv2d layer")
    size = convs[-1][-2:]
    return [m for m, shape in done if len(shape) == 4 and shape[-2:] == size][-1]


METHODS = ("hirescam", "gradcam")


def grad_cam(model: torch.nn.Module, x: torch.Tensor, target=None,
             method: str = "hirescam") -> tuple[np.ndarray, np.ndarray]:
    """Heat maps for a batch of model input `x` (N, C, S, S): (maps (N, S, S) scaled to 0..1 per face, the
    class index each map explains). `target` (N,) chooses the classes; by default each face's top class.
    `method`: "hirescam" or "gradcam" (see the module's docstring)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    layer = cam_layer(model, x)
    seen = {}
    hook = layer.register_forward_hook(lambda m, i, o: seen.__setitem__("map", o))
    try:
        with torch.enable_grad():
            logits = model.eval()(x)
            target = logits.argmax(1) if target is None else torch.as_tensor(target, device=logits.device).long()
            score = logits.gather(1, target[:, None]).sum()
            (grads,) = torch.autograd.grad(score, seen["map"])
    finally:
        hook.remove()
    fmap = seen["map"].detach()
    weights = grads if method == "hirescam" else grads.mean((2, 3), keepdim=True)
    cam = F.relu((weights * fmap).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    cam = cam / cam.amax((1, 2), keepdim=True).clamp_min(1e-12)
    return cam.float().cpu().numpy(), target.cpu().numpy()


def _jet(cam: np.ndarray) -> np.ndarray:
    """A 0..1 map as RGB uint8 in the jet colour map (blue low, red high)."""
    import cv2
    return cv2.applyColorMap(np.uint8(np.clip(cam, 0, 1) * 255), cv2.COLORMAP_JET)[..., ::-1]


def overlay(gray_or_rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """An RGB picture with `cam` (0..1, same height and width) blended on it as a jet colour map."""
    base = gray_or_rgb if gray_or_rgb.ndim == 3 else np.repeat(gray_or_rgb[..., None], 3, -1)
    heat = _jet(cam)
    return np.uint8(np.clip((1 - alpha) * base[..., :3].astype(np.float32) + alpha * heat, 0, 255))


def draw_explained(image: np.ndarray, faces: list[dict], alpha: float = 0.45) -> np.ndarray:
    """`image` (RGB or gray) with each face's heat map blended over its box, then the boxes and labels drawn
    (`faces` as `Predictor.explain` returns them)."""
    out = np.ascontiguousarray(np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3]).copy()
    for f in faces:
        x, y, w, h = f["box"]
        region = out[y:y + h, x:x + w]
        region[...] = overlay(region, f["heatmap"][:region.shape[0], :region.shape[1]], alpha)
    return draw_faces(out, faces)


def heatmap_rgba(cam: np.ndarray, max_alpha: float = 0.6) -> np.ndarray:
    """A heat map as RGBA uint8 to lay over its box: jet colours, opacity growing with the map's value."""
    return np.dstack([_jet(cam), np.uint8(np.clip(cam, 0, 1) * max_alpha * 255)])
