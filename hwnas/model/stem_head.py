"""The stem and the head of a network, as PyTorch modules of the macro-architecture's layers.

Their convolutions are defined once, by `Macro.stem_layer` and `Macro.head_layer`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from hwnas.spaces.macro import Macro
from hwnas.spaces.ops import ConvLayer


def conv2d(layer: ConvLayer) -> nn.Conv2d:
    """The nn.Conv2d of one ConvLayer (what follows it, BN and ReLU, is the caller's)."""
    return nn.Conv2d(layer.cin, layer.cout, layer.kernel, layer.stride, layer.padding,
                     dilation=layer.dilation, groups=layer.groups, bias=layer.bias)


class Stem(nn.Module):
    """conv -> bn -> ReLU."""

    def __init__(self, macro: Macro):
        super().__init__()
        layer = macro.stem_layer()
        self.conv = conv2d(layer)
        self.bn = nn.BatchNorm2d(layer.cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Head(nn.Module):
    """1x1 conv (bias, no BN) -> ReLU -> global average pool -> fc."""

    def __init__(self, macro: Macro, scale: float):
        super().__init__()
        self.conv = conv2d(macro.head_layer(scale))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(macro.head_channels, macro.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(F.relu(self.conv(x), inplace=True)), 1))
