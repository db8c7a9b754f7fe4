"""Batched augmentation on the training device: one affine warp + random erasing per batch.

Per-image PIL transforms cost more than the model on 2 CPU cores; here a whole batch is flipped,
rotated, scaled and shifted by a single `grid_sample`, and erased with one mask, on whatever device
the model lives on. Evaluation never calls this.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    hflip: float = 0.5          # probability of a horizontal flip
    rotate: float = 10.0        # max rotation, degrees
    scale: float = 0.1          # zoom in [1-scale, 1+scale]
    translate: float = 0.1      # max shift, fraction of the image side (random crop with padding)
    erase: float = 0.25         # probability of random erasing
    erase_area: tuple[float, float] = (0.02, 0.2)
    noise: float = 0.0          # max std of additive Gaussian pixel noise (in normalised units)

    @property
    def enabled(self) -> bool:
        return any((self.hflip, self.rotate, self.scale, self.translate, self.erase, self.noise))


def augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment a float batch (B, C, H, W); same generator state -> same result."""
    if not cfg.enabled:
        return x
    b, dev = x.shape[0], x.device

    def u(lo, hi):  # uniform (B,) on the generator's device, then moved
        return (torch.rand(b, generator=generator, device=generator.device if generator else "cpu")
                * (hi - lo) + lo).to(dev)

    angle = u(-cfg.rotate, cfg.rotate) * math.pi / 180
    scale = u(1 - cfg.scale, 1 + cfg.scale)
    tx, ty = u(-cfg.translate, cfg.translate) * 2, u(-cfg.translate, cfg.translate) * 2  # grid units span 2
    flip = torch.where(u(0, 1) < cfg.hflip, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    if cfg.noise > 0:  # each image gets its own noise level in [0, noise]
        sigma = u(0, cfg.noise).view(-1, 1, 1, 1)
        x = x + sigma * torch.randn(x.shape, generator=generator, device=generator.device if generator else "cpu"
                                    ).to(dev, x.dtype)
    if cfg.erase > 0:
        h, w = x.shape[-2:]
        area = u(*cfg.erase_area) * h * w
        aspect = torch.exp(u(math.log(0.3), math.log(3.3)))
        eh = torch.sqrt(area * aspect).clamp(1, h)
        ew = torch.sqrt(area / aspect).clamp(1, w)
        y0, x0 = u(0, 1) * (h - eh), u(0, 1) * (w - ew)
        ys = torch.arange(h, device=dev).view(1, h, 1)
        xs = torch.arange(w, device=dev).view(1, 1, w)
        box = ((ys >= y0.view(-1, 1, 1)) & (ys < (y0 + eh).view(-1, 1, 1)) &
               (xs >= x0.view(-1, 1, 1)) & (xs < (x0 + ew).view(-1, 1, 1)))
        box &= (u(0, 1) < cfg.erase).view(-1, 1, 1)
        x = x.masked_fill(box.unsqueeze(1), 0.0)  # 0 = the mean grey once normalised
    return x
