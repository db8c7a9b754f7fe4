"""Batched augmentation on the training device, in three stages, each a few tensor ops per batch.

`degrade` works on the faces' pixels (0-255), before the model's preprocessing: what a camera, light and a
codec do to a face (gamma, blur, low resolution, JPEG blocks), each to a random share of the faces at a random
strength. `augment` works on the model's input: a whole batch flipped, rotated, scaled and shifted by one
`grid_sample`, pixel noise, and random erasing with one mask. `mix` blends faces of a batch with each other,
and their targets with them (mixup, CutMix). Per-image PIL transforms cost more than the model on 2 CPU cores.
Evaluation never calls any of them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
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
    # degradations of the pixels (`degrade`): the probability that a face gets each, and its range of strength
    gamma: float = 0.0          # probability of a gamma curve, gamma in gamma_range (log-uniform; > 1 darkens)
    gamma_range: tuple[float, float] = (0.5, 2.0)
    blur: float = 0.0           # probability of a Gaussian blur, sigma in blur_sigma px
    blur_sigma: tuple[float, float] = (0.4, 1.6)
    downscale: float = 0.0      # probability of a down-scale and back up, to a side share in downscale_range
    downscale_range: tuple[float, float] = (0.3, 0.8)
    jpeg: float = 0.0           # probability of JPEG compression (8x8 DCT blocks), quality in jpeg_quality
    jpeg_quality: tuple[float, float] = (10.0, 60.0)
    # mixing faces and their targets (`mix`): alpha of the Beta(alpha, alpha) share of each batch; 0 = off
    mixup: float = 0.0          # blend each face with another face of the batch
    cutmix: float = 0.0         # paste a box of another face of the batch; the target follows the box's area
    mix_prob: float = 1.0       # probability that a batch is mixed; with both on, half take mixup, half CutMix

    @property
    def enabled(self) -> bool:
        return any((self.hflip, self.rotate, self.scale, self.translate, self.erase, self.noise))

    @property
    def degrades(self) -> bool:
        return any((self.gamma, self.blur, self.downscale, self.jpeg))

    @property
    def mixes(self) -> bool:
        return bool((self.mixup or self.cutmix) and self.mix_prob)


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


def mix(x: torch.Tensor, target: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix of a model-input batch (B, C, H, W) and its soft targets (B, K), with probability
    cfg.mix_prob: each face is mixed with the face at its place in a random permutation of the batch, by one share
    lam ~ Beta(alpha, alpha) for the batch. Mixup: lam x face + (1 - lam) x partner. CutMix: a box of the partner
    (area about 1 - lam, centre anywhere, clipped at the border) pasted at the same place; lam is then the share
    of the face left. Either way the target is lam x target + (1 - lam) x the partner's, so rows still sum to 1.
    Same generator state -> same result; inputs are never written to."""
    if not cfg.mixes:
        return x, target
    gdev = generator.device if generator else "cpu"
    draw = torch.rand(2, generator=generator, device=gdev).tolist()
    if draw[0] >= cfg.mix_prob:
        return x, target
    cut = cfg.cutmix > 0 and (cfg.mixup <= 0 or draw[1] < 0.5)
    alpha = cfg.cutmix if cut else cfg.mixup
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=gdev))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))  # torch's Beta cannot take a generator
    partner = torch.randperm(x.shape[0], generator=generator, device=gdev).to(x.device)
    if cut:
        h, w = x.shape[-2:]
        side = math.sqrt(1 - lam)
        bh, bw = round(h * side), round(w * side)
        cy, cx = (torch.rand(2, generator=generator, device=gdev) * torch.tensor([h, w])).long().tolist()
        y0, y1 = max(cy - bh // 2, 0), min(cy + bh - bh // 2, h)
        x0, x1 = max(cx - bw // 2, 0), min(cx + bw - bw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x[partner][..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = lam * x + (1 - lam) * x[partner]
    return x, lam * target + (1 - lam) * target[partner]


# ------------------------------------------------------------------------------------------------ degradations

# JPEG's luminance quantisation table at quality 50 (ITU-T T.81, Annex K, table K.1), row by row
_JPEG_LUMA = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=torch.float32)


def _dct_matrix(n: int = 8) -> torch.Tensor:
    """The orthonormal DCT-II matrix D: coefficients = D @ block @ D.T, block = D.T @ coefficients @ D."""
    k = torch.arange(n, dtype=torch.float64).view(-1, 1)
    i = torch.arange(n, dtype=torch.float64).view(1, -1)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d.float()


_DCT = _dct_matrix()


def jpeg_tables(quality: torch.Tensor) -> torch.Tensor:
    """(B,) qualities 1-100 -> (B, 8, 8) luminance quantisation tables, scaled as libjpeg scales them."""
    q = quality.float().clamp(1, 100)
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q).view(-1, 1, 1)
    return torch.floor((_JPEG_LUMA.to(q.device) * scale + 50) / 100).clamp(1, 255)


def jpeg_compress(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Grey pixels (B, H, W) in 0-255 through JPEG's lossy step at each face's quality: 8x8 blocks (the border
    repeated up to a multiple of 8), level shift, DCT, coefficients rounded to the quantisation table, back."""
    b, h, w = x.shape
    ph, pw = -h % 8, -w % 8
    if ph or pw:
        x = F.pad(x.unsqueeze(1), (0, pw, 0, ph), mode="replicate").squeeze(1)
    hh, ww = x.shape[-2:]
    d = _DCT.to(x.device, x.dtype)
    blocks = x.reshape(b, hh // 8, 8, ww // 8, 8).transpose(2, 3) - 128  # (B, rows, cols, 8, 8)
    coef = d @ blocks @ d.T
    table = jpeg_tables(quality).to(x.dtype).view(b, 1, 1, 8, 8)
    blocks = d.T @ (torch.round(coef / table) * table) @ d + 128
    out = blocks.transpose(2, 3).reshape(b, hh, ww)[:, :h, :w]
    return out.round().clamp(0, 255)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """(B, H, W) blurred with each face's own sigma (B,) px: separable 9-tap kernels, the border mirrored."""
    b = x.shape[0]
    taps = torch.arange(-4, 5, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (taps.view(1, -1) / sigma.view(-1, 1).to(x.dtype)) ** 2)
    k = k / k.sum(1, keepdim=True)  # (B, 9)
    y = F.pad(x.unsqueeze(0), (4, 4, 4, 4), mode="reflect")  # (1, B, H+8, W+8): one channel per face
    y = F.conv2d(y, k.view(b, 1, 1, 9), groups=b)
    return F.conv2d(y, k.view(b, 1, 9, 1), groups=b).squeeze(0)


def degrade(faces: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Grey faces (B, H, W) with pixels 0-255 (any dtype) -> float faces, degraded in the order a photo is:
    light (gamma), optics (blur), resolution (down-scale and back), compression (JPEG). Each face gets each
    degradation with its probability, at a strength drawn from its range; same generator state -> same result."""
    x = faces.float()
    if not cfg.degrades:
        return x
    b, dev = x.shape[0], x.device
    h, w = x.shape[-2:]
    gdev = generator.device if generator else "cpu"

    def u(lo, hi):
        return (torch.rand(b, generator=generator, device=gdev) * (hi - lo) + lo).to(dev)

    def chosen(p):
        return (u(0, 1) < p).view(-1, 1, 1)

    if cfg.gamma > 0:
        lo, hi = cfg.gamma_range
        g = torch.exp(u(math.log(lo), math.log(hi))).view(-1, 1, 1)
        x = torch.where(chosen(cfg.gamma), 255 * (x / 255).clamp(0, 1) ** g, x)
    if cfg.blur > 0:
        x = torch.where(chosen(cfg.blur), gaussian_blur(x, u(*cfg.blur_sigma)), x)
    if cfg.downscale > 0:  # one size per batch (a resize takes one), a random share of the faces
        lo, hi = cfg.downscale_range
        share = lo + (hi - lo) * float(torch.rand(1, generator=generator, device=gdev))
        small = (max(1, round(h * share)), max(1, round(w * share)))
        low = F.interpolate(x.unsqueeze(1), size=small, mode="area")
        low = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False).squeeze(1)
        x = torch.where(chosen(cfg.downscale), low, x)
    if cfg.jpeg > 0:
        x = torch.where(chosen(cfg.jpeg), jpeg_compress(x, u(*cfg.jpeg_quality).round()), x)
    return x.clamp(0, 255)
