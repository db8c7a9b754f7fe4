"""ResNet-style nets for 48x48 faces: a 3x3 stem with no early down-sampling (48 px is already small),
then four stages of basic residual blocks at 48, 24, 12 and 6 px, global pooling and a linear head."""
from __future__ import annotations

import torch.nn as nn

from .registry import register
from .vgg import NATIVE


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        nn.init.zeros_(self.bn2.weight)  # each block starts as identity: trains deep nets stably

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), dropout=0.3, num_classes=7,
                 in_channels=1, input_size=48):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        layers, cin = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(cin, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.head(self.layers(self.stem(x)))


@register("resnet_s", **NATIVE)
def resnet_s(dropout=0.2, **kw):
    """~1.2M params, one block per stage: CPU-friendly."""
    return ResNet((32, 64, 128, 256), (1, 1, 1, 1), dropout=dropout, **kw)


@register("resnet_m", **NATIVE)
def resnet_m(dropout=0.3, **kw):
    """~2.8M params: ResNet-18 depth at half width."""
    return ResNet((32, 64, 128, 256), (2, 2, 2, 2), dropout=dropout, **kw)


@register("resnet18", **NATIVE)
def resnet18(dropout=0.3, **kw):
    """~11.2M params: ResNet-18 for 48x48 faces, for a GPU."""
    return ResNet((64, 128, 256, 512), (2, 2, 2, 2), dropout=dropout, **kw)
