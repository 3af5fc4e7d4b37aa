"""The fused multi-branch layer: the reference SupernetCell's own parameters, fewer passes.

For the active depthwise branches (ungrouped 1x1s):
- their expand 1x1 convs run as ONE conv over the concatenated weights on GPUs; on the CPU one
  conv per branch, each writing a tensor of its own that the kernel reads where it is (why: docs/kernel.md;
  a concatenated output above glibc's 32 MB mmap threshold page-faults afresh every step);
- their first BN + ReLU and their depthwise convs run as ONE mixed-depthwise kernel with the
  BN's scale/shift and the ReLU applied on load (torch.ops.hwnas.mixed_depthwise_bn_relu): the
  activated hidden tensor is never written nor kept for backward, and each branch's output is
  a tensor of its own (no split; in backward, no concatenation of the branch gradients). The
  BN is per channel, so one BN over all the branches' channels is exact in training too; each
  branch's running statistics are updated in its own BN;
- then each branch's BN2 + ReLU: on the CPU all branches' in one more call of the same kernel,
  as 1x1 segments of unit weight (its one-pass statistics and backward; each branch keeps its
  own BN), on GPUs cuDNN's; then each branch's projection and BN3, and the mean with the
  identity.
Other branches (dense, dual, spatially separable, grouped 1x1s) run as in the reference.
In a data-parallel run (batch norms made global by hwnas.supernet.global_bn) the kernel is given
the global batch's statistics instead of taking its own, and autograd carries their gradient.
The kernel calls are torch operators: the layer compiles whole with torch.compile(fullgraph=True)
given its configuration as a tuple of bools (docs/torch-op.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from hwnas.kernels import SegmentSpec
from hwnas.kernels.ops import geometry, update_running_stats
from hwnas.model.blocks import cell_mean, is_fusable_depthwise
from hwnas.selfcheck.fallback import use_fused
from hwnas.supernet.cell import SupernetCell
from hwnas.supernet.global_bn import global_statistics, record_batch


def bn_relu_conv(h: torch.Tensor | list[torch.Tensor], bns: list[Any], weight: torch.Tensor,
                 segments: list[SegmentSpec], training: bool, inplace: bool) -> list[torch.Tensor]:
    """Each segment's depthwise conv of relu(bn(.)) over its channels of h (one tensor of all
    segments' channels, or one per segment), one BN per segment, in one kernel call (inplace: the
    backward may write dL/dh over h); each BN's running statistics are updated as its own."""
    first = bns[0]
    if any(bn.momentum != first.momentum or bn.eps != first.eps for bn in bns) or first.momentum is None:
        raise ValueError("the fused batch norm needs one fixed momentum and eps for all branches")
    hs = [h] if isinstance(h, torch.Tensor) else h
    n, _, height, width = hs[0].shape
    sizes = [bn.num_features for bn in bns]
    gamma, beta = torch.cat([bn.weight for bn in bns]), torch.cat([bn.bias for bn in bns])
    world = getattr(first, "world", 1)
    if training and world > 1:  # a data-parallel run: the global batch's statistics (global_bn.py)
        mean, var = global_statistics(hs, world)
        # the kernel normalises with the given statistics and returns their gradient, which flows
        # back to every rank's h (read again then: no overwrite)
        outs, _, _ = torch.ops.hwnas.mixed_depthwise_bn_relu(hs, weight, gamma, beta, mean, var, *geometry(segments),
                                                             False, first.eps, "fast", False)
        for bn, m, v in zip(bns, mean.split(sizes), var.split(sizes)):
            record_batch(bn, m, v, n * height * width * world)
        return list(outs)
    stats = (None, None) if training else (torch.cat([bn.running_mean for bn in bns]),
                                           torch.cat([bn.running_var for bn in bns]))
    outs, mean, var = torch.ops.hwnas.mixed_depthwise_bn_relu(
        hs, weight, gamma, beta, *stats, *geometry(segments), training, first.eps, "fast",
        inplace and not torch.compiler.is_compiling())
    if training:
        for bn, m, v in zip(bns, mean.split(sizes), var.split(sizes)):
            update_running_stats(bn.running_mean, bn.running_var, m, v, n * height * width, first.momentum)
            bn.num_batches_tracked.add_(1)
    return list(outs)


def bn_relu_depthwise(h: torch.Tensor | list[torch.Tensor], blocks: list[Any], training: bool,
                      inplace: bool) -> list[torch.Tensor]:
    """Each block's depthwise(relu(bn1(.))) over its channels of h, in one kernel call."""
    dw: list[Any] = [b.depthwise for b in blocks]
    segments = [SegmentSpec(c.out_channels, c.kernel_size[0], c.dilation[0], c.stride[0]) for c in dw]
    weight = torch.cat([c.weight.reshape(-1) for c in dw])
    return bn_relu_conv(h, [b.bn1 for b in blocks], weight, segments, training, inplace)


def bn_relu(ys: list[torch.Tensor], bns: list[Any], training: bool, inplace: bool) -> list[torch.Tensor]:
    """relu(bn(y)) of each y with its own BN, in one kernel call: the same kernel with 1x1 segments
    of unit weight, so its one-pass statistics and its one-pass backward (dL/dy over y when
    inplace) serve this BN too (torch's CPU batch norm + ReLU take about twice the passes)."""
    segments = [SegmentSpec(y.shape[1], 1) for y in ys]
    ones = ys[0].new_ones(sum(y.shape[1] for y in ys))
    return bn_relu_conv(ys, bns, ones, segments, training, inplace)


def fused_forward(cell: SupernetCell, x: torch.Tensor, config: torch.Tensor | Sequence[bool],
                  inplace: bool = True) -> torch.Tensor:
    active = cell.active(config)
    if not active:
        return x
    branches: Any = cell.branches
    fused = [i for i in active if is_fusable_depthwise(branches[i])]
    outs: list[torch.Tensor] = []
    if fused:
        blocks = [branches[i] for i in fused]
        expands = [b.expand.weight for b in blocks]
        # contiguous: a channels-last x gives channels-last convs, which the kernel does not read
        h = F.conv2d(x, torch.cat(expands)).contiguous() if x.is_cuda else [F.conv2d(x, w).contiguous()
                                                                            for w in expands]
        ys = bn_relu_depthwise(h, blocks, cell.training, inplace)
        if x.is_cuda:  # cuDNN's batch norm is already a fused pair of kernels
            zs = [F.relu(b.bn2(y), inplace=True) for b, y in zip(blocks, ys)]
        else:
            zs = bn_relu(ys, [b.bn2 for b in blocks], cell.training, inplace)
        outs.extend(b.bn3(b.project(z)) for b, z in zip(blocks, zs))
    outs.extend(branches[i](x) for i in active if i not in fused)
    return cell_mean(x, outs, cell.identity)


class FusedSupernetCell(nn.Module):
    """Same parameters and interface as SupernetCell (it wraps one), computed by fused_forward.

    inplace (default): the backward writes the expand output's gradient over the expand output
    itself, this layer's own intermediate (on the CPU: no hidden-sized gradient buffer, whose
    fresh pages cost ~10 ms per 50 MB every step). Like nn.ReLU(inplace=True) it allows one
    backward through the graph: pass inplace=False to backward more than once (retain_graph,
    gradcheck); a second backward through an in-place layer raises torch's in-place error.

    On its first use on a device and dtype the layer checks its kernels against PyTorch's ops, and
    computes with the wrapped SupernetCell if they fail (HWNAS_FUSED: hwnas.selfcheck.fallback).
    """

    def __init__(self, cell: SupernetCell, inplace: bool = True):
        super().__init__()
        self.cell, self.inplace = cell, inplace

    def forward(self, x: torch.Tensor, config: torch.Tensor | Sequence[bool]) -> torch.Tensor:
        if not use_fused(x):  # HWNAS_FUSED=off, or the kernels failed their first-use check here
            return self.cell(x, config)  # type: ignore[no-any-return]
        return fused_forward(self.cell, x, config, self.inplace)
