"""Batch norm over the global batch of a data-parallel run, on any device.

In training, a batch norm normalises with its batch's statistics: with the batch split over
ranks, each rank must use the statistics of the whole batch, and the gradient of every rank's
loss flows back through them into every rank's inputs (as torch's SyncBatchNorm does; that one
runs on GPUs only). Here the per-rank mean and variance are combined by a differentiable
all-reduce, so autograd gives the exact gradient on CPUs (gloo) and GPUs (NCCL) alike; the
fused layer combines its statistics with the same `global_statistics`.

Ranks hold equal shares of every batch (the search's sampler sees to it), so the global mean is
the mean of the ranks' means.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class SumOverRanks(torch.autograd.Function):
    """The sum of a tensor over the ranks; its gradient is the sum of the ranks' gradients (each
    rank's loss depends on every rank's input). torch's own differentiable all-reduce is deprecated
    in torch.distributed.nn and private in its successor, so it is written out here."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = x.clone(memory_format=torch.contiguous_format)
        torch.distributed.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        out = grad.clone(memory_format=torch.contiguous_format)
        torch.distributed.all_reduce(out)
        return out


def global_statistics(mean: Tensor, var: Tensor, world: int) -> tuple[Tensor, Tensor]:
    """The global batch's per-channel mean and biased variance from each rank's (equal shares),
    differentiable: mean of the ranks' variances plus the variance of their means, combined in
    float64 (a variance of means taken as E[m^2] - E[m]^2 would lose digits in float32)."""
    m = mean.to(torch.float64)
    parts = torch.stack([m, m * m, var.to(torch.float64)])
    total: Tensor = SumOverRanks.apply(parts) / world
    g_mean = total[0]
    g_var = (total[2] + (total[1] - g_mean * g_mean)).clamp_min(0)
    return g_mean.to(mean.dtype), g_var.to(var.dtype)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training statistics are the global batch's while `world` > 1 (the same
    parameters, buffers and state_dict keys; evaluation uses the running statistics, as ever)."""

    world: int = 1

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and self.world > 1):
            return super().forward(x)
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        var, mean = torch.var_mean(x.to(acc), dim=(0, 2, 3), unbiased=False)
        mean, var = global_statistics(mean, var, self.world)
        if self.track_running_stats:
            record_batch(self, mean, var, x.numel() // x.shape[1] * self.world)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight.to(acc)
        shift = -mean * scale + (self.bias.to(acc) if self.affine else 0)
        return (x * scale.to(x.dtype).view(1, -1, 1, 1) + shift.to(x.dtype).view(1, -1, 1, 1))


def record_batch(bn: Any, mean: Tensor, var: Tensor, count: int) -> None:
    """Fold a training batch's statistics (biased var over `count` values per channel) into the
    running ones, with F.batch_norm's rule (momentum None: the cumulative average)."""
    from hwnas.kernels.ops import update_running_stats

    bn.num_batches_tracked.add_(1)
    momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    update_running_stats(bn.running_mean, bn.running_var, mean.detach(), var.detach(), count, momentum)


def set_world(net: nn.Module, world: int) -> nn.Module:
    """Make every BatchNorm2d of `net` a GlobalBatchNorm2d of a world of `world` ranks (in place:
    the modules change class and keep their tensors); world 1 makes them plain batch norms again
    (the Pareto retrieval's per-rank evaluations)."""
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            if world > 1:
                module.__class__ = GlobalBatchNorm2d
            if isinstance(module, GlobalBatchNorm2d):
                module.world = world
    return net
