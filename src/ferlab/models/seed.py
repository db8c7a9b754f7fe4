"""The seed study's five CNNs, layer for layer as its README gives them.

The seed fed 3x128x128 images (grayscale copied to three channels, no normalisation); every model
here takes `in_channels` and `input_size` so it also runs at FER2013's native 1x48x48. 3x3 convs use
padding 1: that is what makes the seed's FC sizes (64*32*32, 128*16*16, 128*8*8 at 128 px) work out.
"""
from __future__ import annotations

import torch.nn as nn

from .registry import register

SEED_PREPROCESS = dict(input_size=128, in_channels=3, mean=(0.0,), std=(1.0,))


def _conv(cin, cout, bn=False):
    layers = [nn.Conv2d(cin, cout, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    return layers + [nn.ReLU(inplace=True)]


def _check_size(input_size: int, pools: int, name: str):
    if input_size % (2 ** pools):
        raise ValueError(f"{name} needs input_size divisible by {2 ** pools} ({pools} max-pools); got {input_size}")


class SimpleCNN(nn.Module):
    """Iteration 1: two conv + pool stages, one hidden FC layer."""

    def __init__(self, num_classes=7, in_channels=3, input_size=128, dropout=0.2):
        super().__init__()
        _check_size(input_size, 2, "simple_cnn")
        s = input_size // 4
        self.features = nn.Sequential(*_conv(in_channels, 32), nn.MaxPool2d(2), *_conv(32, 64), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * s * s, 128), nn.ReLU(inplace=True),
                                        nn.Dropout(dropout), nn.Linear(128, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class SimpleCNN_v2(nn.Module):
    """Iteration 2: a third conv stage and BatchNorm after every conv."""

    def __init__(self, num_classes=7, in_channels=3, input_size=128):
        super().__init__()
        _check_size(input_size, 3, "simple_cnn_v2")
        s = input_size // 8
        self.features = nn.Sequential(*_conv(in_channels, 32, True), nn.MaxPool2d(2), *_conv(32, 64, True),
                                      nn.MaxPool2d(2), *_conv(64, 128, True), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(128 * s * s, 256), nn.ReLU(inplace=True),
                                        nn.Dropout(0.3), nn.Linear(256, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class ImprovedCNN(nn.Module):
    """Iteration 3: 32-64-128-128, four conv stages, Dropout(0.4)."""

    def __init__(self, num_classes=7, in_channels=3, input_size=128):
        super().__init__()
        _check_size(input_size, 4, "improved_cnn")
        s = input_size // 16
        self.features = nn.Sequential(*_conv(in_channels, 32, True), nn.MaxPool2d(2), *_conv(32, 64, True),
                                      nn.MaxPool2d(2), *_conv(64, 128, True), nn.MaxPool2d(2),
                                      *_conv(128, 128, True), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(128 * s * s, 256), nn.ReLU(inplace=True),
                                        nn.Dropout(0.4), nn.Linear(256, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def _double(cin, cout):
    # The seed's order inside a block: Conv, ReLU, Conv, ReLU, BatchNorm.
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(cout)]


class EnhancedCNN(nn.Module):
    """Iterations 4 and 5: double convs 32-64-128-96, adaptive 4x4 pool, three FC layers.

    Iteration 5 (EnhancedCNN_v2) is the same network with stronger dropout (0.35, 0.6, 0.4).
    """

    def __init__(self, num_classes=7, in_channels=3, input_size=128, dropout=(0.25, 0.5, 0.3)):
        super().__init__()
        _check_size(input_size, 3, "enhanced_cnn")
        d1, d2, d3 = dropout
        self.features = nn.Sequential(
            *_double(in_channels, 32), nn.MaxPool2d(2),
            *_double(32, 64), nn.MaxPool2d(2), nn.Dropout(d1),
            *_double(64, 128), nn.MaxPool2d(2),
            *_double(128, 96), nn.AdaptiveAvgPool2d((4, 4)))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(96 * 4 * 4, 128), nn.ReLU(inplace=True), nn.Dropout(d2),
            nn.Linear(128, 64), nn.ReLU(inplace=True), nn.Dropout(d3), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


@register("simple_cnn", **SEED_PREPROCESS)
def simple_cnn(**kw):
    return SimpleCNN(**kw)


@register("simple_cnn_v2", **SEED_PREPROCESS)
def simple_cnn_v2(**kw):
    return SimpleCNN_v2(**kw)


@register("improved_cnn", **SEED_PREPROCESS)
def improved_cnn(**kw):
    return ImprovedCNN(**kw)


# model_args: {dropout: [d1, d2, d3]} overrides the iteration's dropouts (the sweeps search them)
@register("enhanced_cnn", **SEED_PREPROCESS)
def enhanced_cnn(dropout=(0.25, 0.5, 0.3), **kw):
    return EnhancedCNN(dropout=tuple(dropout), **kw)


@register("enhanced_cnn_v2", **SEED_PREPROCESS)
def enhanced_cnn_v2(dropout=(0.35, 0.6, 0.4), **kw):
    return EnhancedCNN(dropout=tuple(dropout), **kw)
