"""PyTorch building blocks: one operation at one position, the multi-branch cell, stem, head.

This is the reference implementation: the fused kernel, the profilers and the exports are
all checked against it. Layers come from `OpSpec.layers`, the single definition of an op.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hwnas.spaces.macro import Macro, Position
from hwnas.spaces.ops import ConvLayer, OpSpec


def conv_block(layer: ConvLayer) -> nn.Sequential:
    """Conv2d (+ BN) (+ ReLU) for one ConvLayer."""
    mods: list[nn.Module] = [nn.Conv2d(layer.cin, layer.cout, layer.kernel, layer.stride, layer.padding,
                                       dilation=layer.dilation, groups=layer.groups, bias=layer.bias)]
    if layer.bn:
        mods.append(nn.BatchNorm2d(layer.cout))
    if layer.relu:
        mods.append(nn.ReLU(inplace=True))
    return nn.Sequential(*mods)


def stem_layer(macro: Macro) -> ConvLayer:
    return ConvLayer(3, macro.stem_channels, (3, 3), (macro.stem_stride,) * 2, (1, 1))


def head_layer(macro: Macro, cin: int) -> ConvLayer:
    # No BN follows the head's 1x1 conv, so (unlike every other conv) it has a bias.
    return ConvLayer(cin, macro.head_channels, (1, 1), bn=False, bias=True)


class Operation(nn.Sequential):
    """One candidate operation (inverted residual, linear bottleneck) at one layer position."""

    def __init__(self, op: OpSpec, position: Position):
        super().__init__(*(conv_block(layer) for layer in op.layers(position.cin, position.cout, position.stride)))
        self.op, self.position = op, position


def is_fusable_depthwise(branch: nn.Module) -> bool:
    """A depthwise branch with ungrouped 1x1s: its expand/depthwise/project can be merged with
    other such branches of its cell (fused supernet layer, inference re-parameterisation)."""
    op = getattr(branch, "op", None)
    return isinstance(op, OpSpec) and op.kind == "dw" and op.groups == (1, 1)


class MultiBranchCell(nn.Module):
    """Mean of the branches' outputs; a normal cell counts its input (identity) as one more term.

    out = (x + sum_n op_n(x)) / (1 + n) for a normal cell, sum_n op_n(x) / n otherwise.
    A normal cell with no branch is the identity.
    """

    def __init__(self, branches: Sequence[nn.Module], identity: bool):
        super().__init__()
        if not branches and not identity:
            raise ValueError("a cell without identity needs at least one branch")
        self.branches = nn.ModuleList(branches)
        self.identity = identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        terms = len(self.branches) + int(self.identity)
        if not self.branches:
            return x
        out = x if self.identity else None
        for branch in self.branches:
            y = branch(x)
            out = y if out is None else out + y
        assert out is not None
        return out / terms if terms > 1 else out


class Head(nn.Module):
    """1x1 conv (bias, ReLU, no BN), global average pool, FC."""

    def __init__(self, macro: Macro, cin: int):
        super().__init__()
        self.conv = conv_block(head_layer(macro, cin))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(macro.head_channels, macro.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))
