"""VGG-style nets for 48x48 faces: four stages of two 3x3 conv-BN-ReLU layers and a max-pool.

The head keeps a 3x3 spatial map (FER2013 faces are roughly aligned, so *where* a feature fires
matters) before a dropout MLP, as in the VGG variants that lead FER2013 from scratch.
"""
from __future__ import annotations

import torch.nn as nn

from .registry import register

NATIVE = dict(input_size=48, in_channels=1, mean=(0.5077,), std=(0.2166,))  # FER2013 Training pixel stats


def _stage(cin, cout, convs=2):
    layers = []
    for i in range(convs):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.MaxPool2d(2))


class VGG(nn.Module):
    def __init__(self, widths=(64, 128, 256, 512), hidden=1024, dropout=0.5, num_classes=7, in_channels=1,
                 input_size=48):
        super().__init__()
        chans = (in_channels, *widths)
        self.features = nn.Sequential(*[_stage(a, b) for a, b in zip(chans[:-1], chans[1:])],
                                      nn.AdaptiveAvgPool2d(3))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(widths[-1] * 9, hidden),
                                        nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                        nn.Linear(hidden, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.classifier(self.features(x))


@register("vgg_s", **NATIVE)
def vgg_s(dropout=0.4, **kw):
    """~1.8M params: CPU-friendly."""
    return VGG((32, 64, 128, 256), hidden=256, dropout=dropout, **kw)


@register("vgg_s_wide", **NATIVE)
def vgg_s_wide(dropout=0.4, **kw):
    """~2.7M params: vgg_s 1.25x wider; 1.4x its classifier time at batch 64, 1.5-1.6x at batch 1-2 (one thread),
    2.0x at batch 64 with two threads (bench/predict_speed.py)."""
    return VGG((40, 80, 160, 320), hidden=320, dropout=dropout, **kw)


@register("vgg_s_wide_late", **NATIVE)
def vgg_s_wide_late(dropout=0.4, **kw):
    """~2.7M params: vgg_s with its last two stages 1.25x wider (the 48x48 and 24x24 stages, where the time goes,
    stay as they are); 1.2-1.3x vgg_s's classifier time, 1.3x on FER2013 crops end to end (bench/predict_speed.py,
    two threads)."""
    return VGG((32, 64, 160, 320), hidden=320, dropout=dropout, **kw)


@register("vgg_m", **NATIVE)
def vgg_m(dropout=0.5, **kw):
    """~4.4M params."""
    return VGG((48, 96, 192, 384), hidden=512, dropout=dropout, **kw)


@register("vgg_l", **NATIVE)
def vgg_l(dropout=0.5, **kw):
    """~9.4M params: the full-size VGG of the FER2013 literature, for a GPU."""
    return VGG((64, 128, 256, 512), hidden=1024, dropout=dropout, **kw)
