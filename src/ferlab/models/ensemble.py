"""An ensemble as one network: the members' calibrated probabilities, averaged.

`create_model("ensemble", members=[{"model": "vgg_s", "model_args": {}}, ...])` builds every member for the
same input; its state dict holds the members' weights (`members.0.*`, ...) and, per member, the temperature
and logit bias `ferlab calibrate` fitted for it. The forward pass returns the log of the mean of the members'
calibrated probabilities, so softmax of it is that mean, and a temperature fitted on top of it (the packaged
ensemble's own, on PublicTest) calibrates the ensemble as a whole. Because it is one `nn.Module` over one
preprocessing, everything that takes a checkpoint (eval, predict, serve, ONNX export) takes an ensemble.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .registry import create_model, register
from .vgg import NATIVE

# members when none are given: one of each family the ensemble's teachers come from (what the registry's own
# tests build); a packaged ensemble always names its members
EXAMPLE = ({"model": "vgg_s", "model_args": {}}, {"model": "resnet_s", "model_args": {}})


class Ensemble(nn.Module):
    def __init__(self, members: list[dict], num_classes: int = 7, in_channels: int = 1, input_size: int = 48):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(
            create_model(m["model"], num_classes=num_classes, in_channels=in_channels, input_size=input_size,
                         **m.get("model_args", {})) for m in members)
        self.register_buffer("temperatures", torch.ones(len(members)))
        self.register_buffer("biases", torch.zeros(len(members), num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logp = torch.stack([((m(x).float() + b) / t).log_softmax(1)
                            for m, t, b in zip(self.members, self.temperatures, self.biases)])
        return logp.logsumexp(0) - math.log(len(self.members))


@register("ensemble", **NATIVE)
def ensemble(members: list[dict] = EXAMPLE, **kw):
    """The mean of several calibrated members' probabilities (see ferlab.models.ensemble)."""
    return Ensemble(members, **kw)
