"""A network with its fitted calibration applied: the form `model_from_checkpoint` returns a calibrated model in.

The temperature (and optional logit bias) are fitted by `ferlab.engine.calibration`; this module only applies
them, so rebuilding a model from a checkpoint needs nothing from the code that fits them.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class TemperatureScaled(nn.Module):
    """(`net`'s logits + a fixed per-class bias) divided by a fixed temperature (> 1 softens over-confident
    probabilities). The bias is 0 unless a logit adjustment was fitted."""

    def __init__(self, net: nn.Module, temperature: float, bias: list[float] | None = None):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.net = net
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.register_buffer("bias", torch.tensor(bias if bias is not None else 0.0, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.net(x) + self.bias) / self.temperature
