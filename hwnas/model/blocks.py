"""PyTorch building blocks: one operation at one position, and the multi-branch cell's mean.

This is the reference implementation: the fused kernel, the profilers and the exports are
all checked against it. Layers come from `OpSpec.layers`, the single definition of an op.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from hwnas.model.stem_head import conv2d
from hwnas.spaces.macro import Position
from hwnas.spaces.ops import OpSpec

# The middle conv(s) of each kind, with the batch norm that follows each: bn2 is always the
# one before the projection; a two-conv middle puts bn_mid between its convs.
MIDDLE: dict[str, tuple[tuple[str, str], ...]] = {
    "dw": (("depthwise", "bn2"),),
    "conv": (("conv", "bn2"),),
    "dual": (("conv1", "bn_mid"), ("conv2", "bn2")),
    "ssc": (("conv_1xk", "bn_mid"), ("conv_kx1", "bn2")),
}


class Operation(nn.Module):
    """One candidate operation (inverted residual, linear bottleneck) at one layer position:

        expand (1x1) -> bn1 -> ReLU -> middle -> bn2 -> ReLU -> project (1x1) -> bn3

    with the middle by kind (`MIDDLE`): depthwise (dw), conv (conv), conv1 -> bn_mid -> ReLU
    -> conv2 (dual), conv_1xk -> bn_mid -> ReLU -> conv_kx1 (ssc).
    """

    def __init__(self, op: OpSpec, position: Position):
        super().__init__()
        self.op, self.position = op, position
        expand, *middle, project = op.layers(position.cin, position.cout, position.stride)
        self.expand, self.bn1 = conv2d(expand), nn.BatchNorm2d(expand.cout)
        self.middle = MIDDLE[op.kind]
        for (conv_name, bn_name), layer in zip(self.middle, middle, strict=True):
            self.add_module(conv_name, conv2d(layer))
            self.add_module(bn_name, nn.BatchNorm2d(layer.cout))
        self.project, self.bn3 = conv2d(project), nn.BatchNorm2d(project.cout)

    def steps(self) -> list[tuple[nn.Conv2d, nn.BatchNorm2d, bool]]:
        """(conv, its batch norm, whether a ReLU follows) in order."""
        middle = [(getattr(self, conv), getattr(self, bn), True) for conv, bn in self.middle]
        return [(self.expand, self.bn1, True), *middle, (self.project, self.bn3, False)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.expand(x)), inplace=True)
        for conv, bn in self.middle:
            x = F.relu(getattr(self, bn)(getattr(self, conv)(x)), inplace=True)
        return self.bn3(self.project(x))


def is_fusable_depthwise(branch: nn.Module) -> bool:
    """A depthwise branch with ungrouped 1x1s: its expand/depthwise/project can be merged with
    other such branches of its cell (fused supernet layer, inference re-parameterisation)."""
    op = getattr(branch, "op", None)
    return isinstance(op, OpSpec) and op.kind == "dw" and op.groups == (1, 1)


def cell_terms(branches: int, identity: bool) -> int:
    """The number of terms of a cell's mean: its branches, and the identity of a normal cell."""
    return branches + int(identity)


def cell_mean(x: torch.Tensor, outs: Sequence[torch.Tensor], identity: bool) -> torch.Tensor:
    """The multi-branch cell's output: the mean of the branches' outputs, a normal cell's input
    (identity) being one more term (Ci et al., "Evolving Search Space for Neural Architecture
    Search", ICCV 2021):

        out = (x + sum_n op_n(x)) / (1 + n) for a normal cell, sum_n op_n(x) / n otherwise.

    A normal cell with no branch is the identity."""
    if not outs:
        if not identity:
            raise ValueError("a cell without identity needs at least one branch")
        return x
    total = x if identity else outs[0]
    for y in outs[0 if identity else 1:]:
        total = total + y
    terms = cell_terms(len(outs), identity)
    return total / terms if terms > 1 else total


class MultiBranchCell(nn.Module):
    """A cell of a network: its selected branches, merged by `cell_mean`."""

    def __init__(self, branches: Sequence[nn.Module], identity: bool):
        super().__init__()
        if not branches and not identity:
            raise ValueError("a cell without identity needs at least one branch")
        self.branches = nn.ModuleList(branches)
        self.identity = identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cell_mean(x, [branch(x) for branch in self.branches], self.identity)
