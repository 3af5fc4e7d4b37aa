"""The fused multi-branch layer: the reference SupernetCell's own parameters, fewer passes.

For the active depthwise branches (ungrouped 1x1s):
- their expand 1x1 convs run as ONE conv over the concatenated weights;
- BN + ReLU run once over the concatenated channels (per-channel, so exact in training too;
  each branch's running statistics are written back to its own BN);
- their depthwise convs run as ONE mixed-depthwise kernel launch (hwnas.kernels);
- then each branch's BN, ReLU, projection and BN (per branch: each has its own BN), and the
  mean with the identity.
Other branches (dense, dual, spatially separable, grouped 1x1s) run as in the reference.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from hwnas.kernels import SegmentSpec, mixed_depthwise
from hwnas.model.blocks import is_fusable_depthwise
from hwnas.supernet.cell import SupernetCell


def batch_norm_concat(h: torch.Tensor, bns: list[nn.BatchNorm2d], training: bool) -> torch.Tensor:
    """One batch norm over the concatenation of several BNs' channels, exactly as each alone."""
    weight = torch.cat([bn.weight for bn in bns])
    bias = torch.cat([bn.bias for bn in bns])
    running_mean = torch.cat([bn.running_mean for bn in bns])  # type: ignore[misc]
    running_var = torch.cat([bn.running_var for bn in bns])  # type: ignore[misc]
    first = bns[0]
    if any(bn.momentum != first.momentum or bn.eps != first.eps for bn in bns):
        raise ValueError("fused batch norm needs one momentum and eps for all branches")
    momentum = first.momentum if first.momentum is not None else 0.1
    out = F.batch_norm(h, running_mean, running_var, weight, bias, training, momentum, first.eps)
    if training:
        with torch.no_grad():  # write the updated statistics back to each branch's BN
            for bn, mean, var in zip(bns, running_mean.split([b.num_features for b in bns]),
                                     running_var.split([b.num_features for b in bns])):
                bn.running_mean.copy_(mean)  # type: ignore[union-attr]
                bn.running_var.copy_(var)  # type: ignore[union-attr]
                bn.num_batches_tracked.add_(1)  # type: ignore[union-attr,operator]
    return out


def fused_forward(cell: SupernetCell, x: torch.Tensor, config: torch.Tensor) -> torch.Tensor:
    cell.check_config(config)
    active = [i for i, on in enumerate(config.tolist()) if on]
    if not active:
        return x
    branches: Any = cell.branches
    fused = [i for i in active if is_fusable_depthwise(branches[i])]
    outs: list[torch.Tensor] = []
    if fused:
        blocks = [branches[i] for i in fused]  # Sequential(expand, depthwise, project)
        expand_w = torch.cat([b[0][0].weight for b in blocks])
        h = F.conv2d(x, expand_w)
        h = F.relu(batch_norm_concat(h, [b[0][1] for b in blocks], cell.training), inplace=True)
        segments = [SegmentSpec(b[1][0].out_channels, b[1][0].kernel_size[0], b[1][0].dilation[0],
                                b[1][0].stride[0]) for b in blocks]
        dw_w = torch.cat([b[1][0].weight.reshape(-1) for b in blocks])
        for b, y in zip(blocks, mixed_depthwise(h.contiguous(), dw_w, segments)):
            outs.append(b[2](F.relu(b[1][1](y), inplace=True)))
    outs.extend(branches[i](x) for i in active if i not in fused)
    total = x if cell.identity else None
    for y in outs:
        total = y if total is None else total + y
    assert total is not None
    terms = len(active) + int(cell.identity)
    return total / terms if terms > 1 else total


class FusedSupernetCell(nn.Module):
    """Same parameters and interface as SupernetCell (it wraps one), computed by fused_forward."""

    def __init__(self, cell: SupernetCell):
        super().__init__()
        self.cell = cell

    def forward(self, x: torch.Tensor, config: torch.Tensor) -> torch.Tensor:
        return fused_forward(self.cell, x, config)
