"""`mixed_depthwise`: the kernel as a differentiable PyTorch op, on CPU (twin) or CUDA."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import torch

from hwnas.kernels.segments import (SegmentSpec, check_bn_inputs, check_inputs, input_shape, output_shapes,
                                    segment_table)


def _run(name: str, tensors: Sequence[torch.Tensor | None], table: Any, impl: str, total: int | None = None,
         grid: int | None = None) -> None:
    """Run mixed_dw_<name> on the tensors' device; None stands for C's nullptr (no prologue)."""
    first = tensors[0]
    assert first is not None
    pointers = [t.data_ptr() if t is not None else 0 for t in tensors]
    if first.is_cuda:
        from hwnas.kernels import cuda

        cuda.launch(name, first, pointers, table, total, grid)
        return
    from hwnas.kernels.cpu import CPU_ONLY_FORM, library

    suffix = "f64" if first.dtype == torch.float64 else "f32"
    variant = "_fast" if impl == "fast" and name not in CPU_ONLY_FORM else ""
    getattr(library(), f"mixed_dw_{name}{variant}_{suffix}")(*pointers, ctypes.byref(table))


def batch_statistics(hs: Sequence[torch.Tensor], acc: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance over (N, H, W) of the segments hs, in acc.

    Taken on an acc copy of each segment: torch returns fp16/bf16 statistics in the storage
    dtype, and a mean rounded to bf16's 8 bits shifts every normalised value by up to
    |mean| / 256 / std. The copy is transient, one segment at a time.
    """
    stats = [torch.var_mean(h.to(acc), dim=(0, 2, 3), unbiased=False) for h in hs]
    return torch.cat([m for _, m in stats]), torch.cat([v for v, _ in stats])


def _check_impl(impl: str) -> None:
    if impl not in ("fast", "elementwise"):
        raise ValueError(f"impl must be 'fast' or 'elementwise', got {impl!r}")


def _as_inputs(x: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return (x,) if isinstance(x, torch.Tensor) else tuple(x)


def _input_grads(grad: torch.Tensor, xs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """A concatenated (N, C, H, W) input gradient as the inputs' gradients (channel views)."""
    if len(xs) == 1:
        return (grad,)
    bounds = [0]
    for t in xs:
        bounds.append(bounds[-1] + t.shape[1])
    return tuple(grad[:, a:b] for a, b in zip(bounds, bounds[1:]))


def _grad_blocks(grads: Sequence[torch.Tensor | None], x_shape: torch.Size, like: torch.Tensor,
                 segments: Sequence[SegmentSpec]) -> list[torch.Tensor]:
    """The segments' output gradients as the kernels read them: contiguous, zeros for unused outputs."""
    return [g.contiguous() if g is not None else like.new_zeros(shape)
            for g, shape in zip(grads, output_shapes(x_shape, segments))]


class MixedDepthwiseFn(torch.autograd.Function):
    """One output tensor per segment, so autograd hands back one gradient per segment, which
    the backward kernels read where it is (views of a single flat output would each be
    backpropagated as a zero-filled full-size tensor, and need concatenating). The inputs come
    last: one tensor of all channels, or one per segment."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, segments: tuple[SegmentSpec, ...], impl: str,
                *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        check_inputs(xs, weight, segments)
        ys = [weight.new_empty(shape) for shape in output_shapes(input_shape(xs), segments)]
        table, total = segment_table(xs, segments, ys)
        _run("forward", [weight, None, None], table, impl, total=total)
        ctx.save_for_backward(weight, *xs)
        ctx.segments, ctx.impl = segments, impl
        return tuple(ys)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        weight, *xs = ctx.saved_tensors
        grad_ys = _grad_blocks(grads, input_shape(xs), weight, ctx.segments)
        table, _ = segment_table(xs, ctx.segments, grad_ys)
        grad_xs: tuple[torch.Tensor | None, ...] = (None,) * len(xs)
        grad_w = None
        if any(ctx.needs_input_grad[3:]):
            grad_x = weight.new_empty(input_shape(xs))
            _run("grad_input", [weight, grad_x, None, None, None, None], table, ctx.impl)
            grad_xs = _input_grads(grad_x, xs)
        if ctx.needs_input_grad[0]:
            grad_w = torch.empty_like(weight)
            _run("grad_weight", [grad_w, None, None], table, ctx.impl, grid=weight.numel())
        return (grad_w, None, None, *grad_xs)


class MixedDepthwiseBnReluFn(torch.autograd.Function):
    """mixed_depthwise(relu(batch_norm(h))) with the batch norm and ReLU inside the kernels.

    Forward: one pass for the batch statistics (training), one kernel pass that applies
    scale/shift and ReLU on load. The activated tensor is neither written nor saved: the
    backward recomputes it on load from h. Backward: grad_weight reads h through the prologue;
    grad_input masks by the ReLU and sums per channel in its epilogue; the batch norm's
    coefficients follow from the sums (mixed_dw.h) and bn_backward turns the masked gradient
    into dL/dh. On the CPU's fast path the last three are one pass, channel by channel in
    cache, writing dL/dh over h itself when the caller allows it (overwrite_h: the fused layer,
    whose h is its own intermediate); a second backward through the graph then fails loudly.
    h comes last: one tensor of all channels, or one per segment.
    """

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, bn_weight: torch.Tensor, bn_bias: torch.Tensor,
                running_mean: torch.Tensor, running_var: torch.Tensor, segments: tuple[SegmentSpec, ...],
                training: bool, momentum: float, eps: float, impl: str, overwrite_h: bool,
                *hs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        check_inputs(hs, weight, segments)
        n, c, hh, ww = shape = input_shape(hs)
        check_bn_inputs(c, weight.device, bn_weight, bn_bias, running_mean, running_var)
        acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
        count = n * hh * ww
        ys = [weight.new_empty(s) for s in output_shapes(shape, segments)]
        table, total = segment_table(hs, segments, ys)
        if training:
            if weight.is_cuda:  # torch's CUDA reduction is a single efficient pass
                mean, var = batch_statistics(hs, acc)
            else:  # the CPU twin's one-pass statistics (torch's take ~10 passes' time; docs/kernel.md)
                mean, var = weight.new_empty(c, dtype=acc), weight.new_empty(c, dtype=acc)
                _run("channel_stats", [mean, var], table, impl)
            with torch.no_grad():  # as F.batch_norm: the running variance is the unbiased one
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
                unbiased = var * (count / max(count - 1, 1))
                running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        else:
            mean, var = running_mean.to(acc, copy=True), running_var.to(acc)
        invstd = torch.rsqrt(var + eps)
        scale = (bn_weight.to(acc) * invstd).contiguous()
        shift = (bn_bias.to(acc) - mean * scale).contiguous()
        _run("forward", [weight, scale, shift], table, impl, total=total)
        ctx.save_for_backward(weight, scale, shift, mean.contiguous(), invstd, *hs)
        ctx.segments, ctx.impl, ctx.training, ctx.overwrite_h = segments, impl, training, overwrite_h
        ctx.param_dtype = bn_weight.dtype
        return tuple(ys)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        weight, scale, shift, mean, invstd, *hs = ctx.saved_tensors
        c = scale.shape[0]
        fast_cpu = ctx.impl == "fast" and not weight.is_cuda
        if fast_cpu and not ctx.overwrite_h:
            hs = [h.clone() for h in hs]  # grad_input_bn writes dL/dh over its input
        grad_ys = _grad_blocks(grads, input_shape(hs), weight, ctx.segments)
        table, _ = segment_table(hs, ctx.segments, grad_ys)
        grad_w = None
        if ctx.needs_input_grad[0]:  # first: the CPU's fast path below overwrites h
            grad_w = torch.empty_like(weight)
            _run("grad_weight", [grad_w, scale, shift], table, ctx.impl, grid=weight.numel())
        sums = torch.zeros((c, 2), dtype=scale.dtype, device=scale.device)  # sum g, sum g * (h - mean)
        batch_invstd = invstd if ctx.training else None  # None: eval, the statistics are constants
        grad_hs: tuple[torch.Tensor, ...]
        if fast_cpu:
            _run("grad_input_bn", [weight, scale, shift, mean, batch_invstd, sums], table, ctx.impl)
            grad_hs = tuple(hs)
            if ctx.overwrite_h:
                torch.autograd.graph.increment_version(hs)  # h is gone: a second backward must fail
        else:  # the CUDA kernels' sequence (and its per-element twin on the CPU)
            grad_h = weight.new_empty(input_shape(hs))  # dL/da, masked, then dL/dh in place
            _run("grad_input", [weight, grad_h, scale, shift, mean, sums], table, ctx.impl)
            coef = torch.empty((c, 3), dtype=scale.dtype, device=scale.device)
            _run("bn_coefficients", [sums, scale, batch_invstd, mean, coef], table, ctx.impl)
            _run("bn_backward", [grad_h, coef], table, ctx.impl)
            grad_hs = _input_grads(grad_h, hs)
        sum_g, sum_g_xhat = sums[:, 0], sums[:, 1] * invstd  # dL/d(beta), dL/d(gamma)
        return (grad_w, sum_g_xhat.to(ctx.param_dtype), sum_g.to(ctx.param_dtype),
                None, None, None, None, None, None, None, None, *grad_hs)


def mixed_depthwise(x: torch.Tensor | Sequence[torch.Tensor], weight: torch.Tensor, segments: Sequence[SegmentSpec],
                    impl: str = "fast") -> list[torch.Tensor]:
    """Depthwise conv of each channel segment of x with its own kernel/dilation/stride.

    x: one (N, C, H, W) tensor of all segments' channels, or one (N, channels, H, W) tensor
    per segment. weight is the flat concatenation of each segment's (channels, k, k) weights. Returns one
    (N, channels, h_out, w_out) tensor per segment. On the CPU, impl="fast" runs the plane
    forms of the math, impl="elementwise" the per-element forms the CUDA kernels use.
    """
    _check_impl(impl)
    return list(MixedDepthwiseFn.apply(weight, tuple(segments), impl, *_as_inputs(x)))


def mixed_depthwise_bn_relu(h: torch.Tensor | Sequence[torch.Tensor], weight: torch.Tensor,
                            segments: Sequence[SegmentSpec],
                            bn_weight: torch.Tensor, bn_bias: torch.Tensor, running_mean: torch.Tensor,
                            running_var: torch.Tensor, training: bool, momentum: float = 0.1, eps: float = 1e-5,
                            impl: str = "fast", overwrite_h: bool = False) -> list[torch.Tensor]:
    """mixed_depthwise(relu(batch_norm(h))): the batch norm over h's channels (training:
    batch statistics, updating running_mean/var in place as F.batch_norm does; eval: the
    running ones) and the ReLU applied inside the kernel, on load. h: one tensor of all
    segments' channels, or one per segment (as mixed_depthwise's x).

    overwrite_h: the backward may write dL/dh over h (saves an h-sized buffer and a pass on
    the CPU); only for an h nothing else reads after the forward."""
    _check_impl(impl)
    return list(MixedDepthwiseBnReluFn.apply(weight, bn_weight, bn_bias, running_mean, running_var, tuple(segments),
                                             training, momentum, eps, impl, overwrite_h, *_as_inputs(h)))


def reference_mixed_depthwise(x: torch.Tensor, weights: Sequence[torch.Tensor],
                              segments: Sequence[SegmentSpec]) -> list[torch.Tensor]:
    """The same computation with one torch conv2d per segment (the tests' reference)."""
    out, c = [], 0
    for w, s in zip(weights, segments):
        xs = x[:, c:c + s.channels]
        out.append(torch.nn.functional.conv2d(xs, w.view(s.channels, 1, s.kernel, s.kernel), stride=s.stride,
                                              padding=s.padding, dilation=s.dilation, groups=s.channels))
        c += s.channels
    return out
