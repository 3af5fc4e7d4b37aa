"""Batch norm over the global batch of a data-parallel run, on any device.

In training, a batch norm normalises with its batch's statistics: with the batch split over
ranks, each rank must use the statistics of the whole batch, and the gradient of every rank's
loss flows back through them into every rank's inputs. torch's SyncBatchNorm does this with
kernels that exist on GPUs only; here it is written with ops that exist on CPUs and GPUs alike
(batch norm's statistics, batch norm and its backward with given statistics), with one all-reduce of the
statistics in forward and one of two per-channel sums in backward, as SyncBatchNorm has.

Ranks hold equal shares of every batch (the search's sampler sees to it), so the global mean is
the mean of the ranks' means, and the global variance the mean of their variances plus the
variance of their means.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from hwnas.kernels.ops import update_running_stats


def _acc(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _sum_over_ranks(t: Tensor) -> Tensor:
    """The sum over the ranks, in float64 (a variance of means taken as E[m^2] - E[m]^2 would
    lose digits in float32)."""
    out = t.to(torch.float64).contiguous()
    torch.distributed.all_reduce(out)
    return out


def combine(means: Tensor, variances: Tensor, world: int) -> tuple[Tensor, Tensor]:
    """The global batch's per-channel mean and biased variance from this rank's (equal shares)."""
    m = means.to(torch.float64)
    total = _sum_over_ranks(torch.stack([m, m * m, variances.to(torch.float64)])) / world
    mean = total[0]
    var = (total[2] + (total[1] - mean * mean)).clamp_min(0)
    return mean.to(means.dtype), var.to(variances.dtype)


def local_statistics(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of this rank's share, from batch norm's own statistics
    pass (eps 0: the variance comes back exactly as 1 / invstd^2; on CPUs torch's var_mean over
    (N, H, W) takes about 20 times as long)."""
    _, mean, invstd = torch.native_batch_norm(x, None, None, None, None, True, 0.0, 0.0)
    invstd = invstd.to(_acc(x))
    # torch gives invstd 0 (not inf) for a constant channel when eps is 0: its variance is 0
    return mean.to(_acc(x)), torch.where(invstd == 0, 0.0, invstd.pow(-2))


def _channel_view(t: Tensor, like: Tensor) -> Tensor:
    return t.to(like.dtype).view(1, -1, 1, 1)


class _GlobalBatchNorm(torch.autograd.Function):
    """y = weight (x - mean) / sqrt(var + eps) + bias with the global batch's mean and var.
    Backward: batch norm's backward with the statistics as constants gives dL/dbias (sum of dy),
    dL/dweight (sum of dy xhat) and weight invstd dy; the two sums over all ranks then add the
    statistics' share, - weight invstd (sum dy + xhat sum dy xhat) / N."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
                world: int) -> tuple[Tensor, Tensor, Tensor]:
        mean, var = combine(*local_statistics(x), world)
        acc = mean.dtype  # affine parameters at least as precise as the statistics (bf16 weights too)
        w, b = (None if t is None else t.to(acc) for t in (weight, bias))
        y = torch.batch_norm(x, w, b, mean, var, False, 0.0, eps, torch.backends.cudnn.enabled)
        ctx.save_for_backward(x, w, mean, var)
        ctx.param_dtype = weight.dtype if weight is not None else None
        ctx.eps, ctx.world = eps, world
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @once_differentiable  # its all-reduces are not differentiable
    def backward(ctx: Any, dy: Tensor, _mean: Any, _var: Any) -> tuple[Any, ...]:
        x, weight, mean, var = ctx.saved_tensors
        gamma = weight if weight is not None else torch.ones_like(mean)
        none = mean.new_empty(0)  # the saved statistics of training mode: unused in eval mode, but
        # CUDA's channels-last and 64-bit-index paths assert that they are defined
        dx, sum_dy_xhat, sum_dy = torch.ops.aten.native_batch_norm_backward(
            dy.contiguous(), x, gamma, mean, var, none, none, False, ctx.eps, [True, True, True])
        total = _sum_over_ranks(torch.stack([sum_dy, sum_dy_xhat]))
        n = x.numel() // x.shape[1] * ctx.world
        invstd = torch.rsqrt(var.to(torch.float64) + ctx.eps)
        gamma_invstd = gamma.to(torch.float64) * invstd
        shift = gamma_invstd * total[0] / n  # the mean's share
        slope = gamma_invstd * invstd * total[1] / n  # the variance's
        dx.sub_(_channel_view(shift, dx))
        dx.addcmul_(x - _channel_view(mean, x), _channel_view(slope, dx), value=-1)
        grads = (sum_dy_xhat.to(ctx.param_dtype) if ctx.needs_input_grad[1] else None,
                 sum_dy.to(ctx.param_dtype) if ctx.needs_input_grad[2] else None)
        return dx, *grads, None, None


class _GlobalStatistics(torch.autograd.Function):
    """The global batch's per-channel mean and biased variance of the channel segments hs (one
    tensor per segment, or one of all channels): the fused layer normalises with them inside its
    kernel, which returns their gradients; here those flow back to every rank's hs."""

    @staticmethod
    def forward(ctx: Any, world: int, *hs: Tensor) -> tuple[Tensor, Tensor]:
        parts = [local_statistics(h) for h in hs]
        mean, var = combine(torch.cat([m for m, _ in parts]), torch.cat([v for _, v in parts]), world)
        ctx.save_for_backward(mean, *hs)
        ctx.world = world
        return mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_mean: Tensor, d_var: Tensor) -> tuple[Any, ...]:
        # (autograd materialises an unused output's gradient as zeros: both are tensors)
        mean, *hs = ctx.saved_tensors
        total = _sum_over_ranks(torch.stack([d_mean, d_var]))
        n = hs[0].numel() // hs[0].shape[1] * ctx.world
        grads, start = [], 0
        for h in hs:  # dL/dh = (dL/dmean + 2 (h - mean) dL/dvar) / N, per channel
            sl = slice(start, start + h.shape[1])
            g = (h - _channel_view(mean[sl], h)).mul_(_channel_view(2 * total[1][sl] / n, h))
            grads.append(g.add_(_channel_view(total[0][sl] / n, h)))
            start += h.shape[1]
        return None, *grads


def global_statistics(hs: Sequence[Tensor], world: int) -> tuple[Tensor, Tensor]:
    """The global batch's mean and biased variance of the segments hs, differentiable."""
    mean, var = _GlobalStatistics.apply(world, *hs)
    return mean, var


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training statistics are the global batch's while `world` > 1 (the same
    parameters, buffers and state_dict keys; evaluation uses the running statistics, as ever)."""

    world: int = 1

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and self.world > 1):
            return super().forward(x)
        y, mean, var = _GlobalBatchNorm.apply(x, self.weight, self.bias, self.eps, self.world)
        if self.track_running_stats:
            record_batch(self, mean, var, x.numel() // x.shape[1] * self.world)
        return y  # type: ignore[no-any-return]


def record_batch(bn: Any, mean: Tensor, var: Tensor, count: int) -> None:
    """Fold a training batch's statistics (biased var over `count` values per channel) into the
    running ones, with F.batch_norm's rule (momentum None: the cumulative average)."""
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
