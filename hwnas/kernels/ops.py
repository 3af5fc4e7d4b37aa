"""The mixed depthwise kernel as torch operators (`torch.ops.hwnas.*`), on CPU (twin) or CUDA.

Each op's schema is declared once by `torch.library.custom_op`; a fake implementation gives
output shapes to tracing (`torch.compile`, export), and `register_autograd` gives the forward
ops their backward as other ops of this library, so a compiled graph holds them whole. The
segment geometry travels as four int lists (channels, kernels, dilations, strides) beside the
tensors; the ctypes segment table of the loaders underneath is built inside each op.

    torch.ops.hwnas.mixed_depthwise(xs, weight, channels, kernels, dilations, strides, impl)
    torch.ops.hwnas.mixed_depthwise_bn_relu(hs, weight, bn_weight, bn_bias, running_mean,
                                            running_var, channels, ..., training, eps, impl)

`mixed_depthwise` and `mixed_depthwise_bn_relu` below are the Python front doors (SegmentSpec
segments, running statistics updated as F.batch_norm does). docs/torch-op.md has examples.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from hwnas.kernels.segments import (SegmentSpec, check_bn_inputs, check_inputs, input_shape, output_shapes,
                                    segment_table)

IMPLS = ("fast", "elementwise")


def _run(name: str, tensors: Sequence[Tensor | None], table: Any, impl: str, total: int | None = None,
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


def batch_statistics(hs: Sequence[Tensor], acc: torch.dtype) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance over (N, H, W) of the segments hs, in acc.

    Taken on an acc copy of each segment: torch returns fp16/bf16 statistics in the storage
    dtype, and a mean rounded to bf16's 8 bits shifts every normalised value by up to
    |mean| / 256 / std. The copy is transient, one segment at a time.
    """
    stats = [torch.var_mean(h.to(acc), dim=(0, 2, 3), unbiased=False) for h in hs]
    return torch.cat([m for _, m in stats]), torch.cat([v for v, _ in stats])


def _check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"impl must be 'fast' or 'elementwise', got {impl!r}")


def geometry(segments: Sequence[SegmentSpec]) -> tuple[list[int], list[int], list[int], list[int]]:
    """The segments as the ops take them: channels, kernels, dilations, strides."""
    return ([s.channels for s in segments], [s.kernel for s in segments], [s.dilation for s in segments],
            [s.stride for s in segments])


def _segments(channels: Sequence[int], kernels: Sequence[int], dilations: Sequence[int],
              strides: Sequence[int]) -> list[SegmentSpec]:
    return [SegmentSpec(*g) for g in zip(channels, kernels, dilations, strides, strict=True)]


def _as_inputs(x: Tensor | Sequence[Tensor]) -> list[Tensor]:
    return [x] if isinstance(x, Tensor) else list(x)


def _input_grads(grad: Tensor, xs: Sequence[Tensor]) -> list[Tensor]:
    """A concatenated (N, C, H, W) input gradient as the inputs' gradients (channel views)."""
    return [grad] if len(xs) == 1 else list(grad.split([t.shape[1] for t in xs], 1))


def _grad_blocks(grads: Sequence[Tensor | None], x_shape: torch.Size, like: Tensor,
                 segments: Sequence[SegmentSpec]) -> list[Tensor]:
    """The segments' output gradients as the kernels read them: contiguous, zeros for unused outputs."""
    return [g.contiguous() if g is not None else like.new_zeros(shape)
            for g, shape in zip(grads, output_shapes(x_shape, segments))]


def _acc(dtype: torch.dtype) -> torch.dtype:
    """The dtype of batch statistics and BN coefficients."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --- mixed_depthwise -------------------------------------------------------------------------


@torch.library.custom_op("hwnas::mixed_depthwise", mutates_args=())
def _mixed_depthwise(xs: list[Tensor], weight: Tensor, channels: list[int], kernels: list[int],
                     dilations: list[int], strides: list[int], impl: str) -> list[Tensor]:
    """Depthwise conv of each channel segment; one output tensor per segment (autograd then hands
    back one gradient per segment, which the backward kernels read where it is)."""
    segments = _segments(channels, kernels, dilations, strides)
    check_inputs(xs, weight, segments)
    ys = [weight.new_empty(shape) for shape in output_shapes(input_shape(xs), segments)]
    table, total = segment_table(xs, segments, ys)
    _run("forward", [weight, None, None], table, impl, total=total)
    return ys


@_mixed_depthwise.register_fake
def _(xs: list[Tensor], weight: Tensor, channels: list[int], kernels: list[int], dilations: list[int],
      strides: list[int], impl: str) -> list[Tensor]:
    segments = _segments(channels, kernels, dilations, strides)
    check_inputs(xs, weight, segments)
    return [weight.new_empty(shape) for shape in output_shapes(input_shape(xs), segments)]


@torch.library.custom_op("hwnas::mixed_depthwise_grad_input", mutates_args=())
def _grad_input(grad_ys: list[Tensor], xs: list[Tensor], weight: Tensor, channels: list[int], kernels: list[int],
                dilations: list[int], strides: list[int], impl: str) -> Tensor:
    """dL/dx as one (N, C, H, W) tensor of all segments' channels."""
    segments = _segments(channels, kernels, dilations, strides)
    grad_ys = _grad_blocks(grad_ys, input_shape(xs), weight, segments)
    table, _ = segment_table(xs, segments, grad_ys)
    grad_x = weight.new_empty(input_shape(xs))
    _run("grad_input", [weight, grad_x, None, None, None, None], table, impl)
    return grad_x


@_grad_input.register_fake
def _(grad_ys: list[Tensor], xs: list[Tensor], weight: Tensor, channels: list[int], kernels: list[int],
      dilations: list[int], strides: list[int], impl: str) -> Tensor:
    return weight.new_empty(input_shape(xs))


@torch.library.custom_op("hwnas::mixed_depthwise_grad_weight", mutates_args=())
def _grad_weight(grad_ys: list[Tensor], xs: list[Tensor], weight: Tensor, channels: list[int], kernels: list[int],
                 dilations: list[int], strides: list[int], impl: str) -> Tensor:
    """dL/dweight, flat as the weight."""
    segments = _segments(channels, kernels, dilations, strides)
    grad_ys = _grad_blocks(grad_ys, input_shape(xs), weight, segments)
    table, _ = segment_table(xs, segments, grad_ys)
    grad_w = torch.empty_like(weight)
    _run("grad_weight", [grad_w, None, None], table, impl, grid=weight.numel())
    return grad_w


@_grad_weight.register_fake
def _(grad_ys: list[Tensor], xs: list[Tensor], weight: Tensor, channels: list[int], kernels: list[int],
      dilations: list[int], strides: list[int], impl: str) -> Tensor:
    return torch.empty_like(weight)


def _mixed_depthwise_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    xs, weight, *geom, impl = inputs
    ctx.save_for_backward(weight, *xs)
    ctx.geometry, ctx.impl = geom, impl
    ctx.grads = weight.requires_grad, any(x.requires_grad for x in xs)


def _mixed_depthwise_backward(ctx: Any, grad_ys: list[Tensor | None]) -> tuple[Any, ...]:
    weight, *xs = ctx.saved_tensors
    weight_grad, input_grad = ctx.grads
    grad_xs = _input_grads(torch.ops.hwnas.mixed_depthwise_grad_input(grad_ys, xs, weight, *ctx.geometry, ctx.impl),
                           xs) if input_grad else [None] * len(xs)
    grad_w = (torch.ops.hwnas.mixed_depthwise_grad_weight(grad_ys, xs, weight, *ctx.geometry, ctx.impl)
              if weight_grad else None)
    return grad_xs, grad_w, None, None, None, None, None


_mixed_depthwise.register_autograd(_mixed_depthwise_backward, setup_context=_mixed_depthwise_setup)


# --- mixed_depthwise_bn_relu -----------------------------------------------------------------


def _bn_coefficients(bn_weight: Tensor, bn_bias: Tensor, mean: Tensor, var: Tensor, eps: float
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """invstd, and the scale/shift that apply batch_norm as scale * h + shift."""
    invstd = torch.rsqrt(var + eps)
    scale = (bn_weight.to(mean.dtype) * invstd).contiguous()
    return invstd, scale, (bn_bias.to(mean.dtype) - mean * scale).contiguous()


@torch.library.custom_op("hwnas::mixed_depthwise_bn_relu", mutates_args=())
def _bn_relu(hs: list[Tensor], weight: Tensor, bn_weight: Tensor, bn_bias: Tensor, running_mean: Tensor | None,
             running_var: Tensor | None, channels: list[int], kernels: list[int], dilations: list[int],
             strides: list[int], training: bool, eps: float, impl: str,
             overwrite_h: bool) -> tuple[list[Tensor], Tensor, Tensor]:
    """mixed_depthwise(relu(batch_norm(h))), the batch norm and ReLU applied on load.

    Returns the outputs, and the mean and (biased) variance the batch norm used (fp32, or fp64
    for fp64 inputs): training, the batch's, from one pass over h; eval, the given ones (running
    statistics; or statistics computed elsewhere, which get their gradient when they require it:
    a data-parallel run's global batch statistics). The activated tensor is neither written nor saved. The running statistics are the caller's to
    update (mixed_depthwise_bn_relu below does, as F.batch_norm). overwrite_h: the backward may
    write dL/dh over hs (mixed_depthwise_bn_relu_backward_)."""
    segments = _segments(channels, kernels, dilations, strides)
    check_inputs(hs, weight, segments)
    c = input_shape(hs)[1]
    ys = [weight.new_empty(s) for s in output_shapes(input_shape(hs), segments)]
    table, total = segment_table(hs, segments, ys)
    acc = _acc(weight.dtype)
    if training:
        if weight.is_cuda:  # torch's CUDA reduction is a single efficient pass
            mean, var = batch_statistics(hs, acc)
        else:  # the CPU twin's one-pass statistics (torch's take ~10 passes' time; docs/kernel.md)
            mean, var = weight.new_empty(c, dtype=acc), weight.new_empty(c, dtype=acc)
            _run("channel_stats", [mean, var], table, impl)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("eval mode needs running_mean and running_var")
        mean, var = running_mean.to(acc, copy=True), running_var.to(acc, copy=True)
    check_bn_inputs(c, weight.device, bn_weight, bn_bias, mean, var)
    _, scale, shift = _bn_coefficients(bn_weight, bn_bias, mean, var, eps)
    _run("forward", [weight, scale, shift], table, impl, total=total)
    return ys, mean, var


@_bn_relu.register_fake
def _(hs: list[Tensor], weight: Tensor, bn_weight: Tensor, bn_bias: Tensor, running_mean: Tensor | None,
      running_var: Tensor | None, channels: list[int], kernels: list[int], dilations: list[int],
      strides: list[int], training: bool, eps: float, impl: str, overwrite_h: bool) -> tuple[list[Tensor], Tensor, Tensor]:
    segments = _segments(channels, kernels, dilations, strides)
    check_inputs(hs, weight, segments)
    c = input_shape(hs)[1]
    check_bn_inputs(c, weight.device, bn_weight, bn_bias,
                    *([] if training else [t for t in (running_mean, running_var) if t is not None]))
    acc = _acc(weight.dtype)
    return ([weight.new_empty(s) for s in output_shapes(input_shape(hs), segments)],
            weight.new_empty(c, dtype=acc), weight.new_empty(c, dtype=acc))


def _bn_relu_grads(grad_ys: list[Tensor], hs: list[Tensor], weight: Tensor, bn_weight: Tensor, bn_bias: Tensor,
                   mean: Tensor, var: Tensor, segments: list[SegmentSpec], training: bool, eps: float, impl: str,
                   weight_grad: bool, overwrite: bool) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """grad weight (empty unless weight_grad), grad bn_weight, grad bn_bias, and dL/dh: a new
    concatenated tensor, or (overwrite: CPU fast path only) written over hs and None returned.

    grad_weight reads h through the prologue; grad_input masks by the ReLU and sums per channel
    in its epilogue; the batch norm's coefficients follow from the sums (mixed_dw.h) and
    bn_backward turns the masked gradient into dL/dh. On the CPU's fast path the last three are
    one pass, channel by channel in cache, writing dL/dh over its input."""
    invstd, scale, shift = _bn_coefficients(bn_weight, bn_bias, mean, var, eps)
    c = scale.shape[0]
    grad_blocks = _grad_blocks(grad_ys, input_shape(hs), weight, segments)
    table, _ = segment_table(hs, segments, grad_blocks)
    grad_w = weight.new_empty(0)
    if weight_grad:  # first: the CPU's fast path below overwrites h
        grad_w = torch.empty_like(weight)
        _run("grad_weight", [grad_w, scale, shift], table, impl, grid=weight.numel())
    sums = torch.zeros((c, 2), dtype=scale.dtype, device=scale.device)  # sum g, sum g * (h - mean)
    batch_invstd = invstd if training else None  # None: eval, the statistics are constants
    grad_h: Tensor | None
    if impl == "fast" and not weight.is_cuda:
        grad_h = None if overwrite else torch.cat(hs, 1)
        if grad_h is not None:
            table, _ = segment_table([grad_h], segments, grad_blocks)
        _run("grad_input_bn", [weight, scale, shift, mean, batch_invstd, sums], table, impl)
    else:  # the CUDA kernels' sequence (and its per-element twin on the CPU)
        grad_h = weight.new_empty(input_shape(hs))  # dL/da, masked, then dL/dh in place
        _run("grad_input", [weight, grad_h, scale, shift, mean, sums], table, impl)
        coef = torch.empty((c, 3), dtype=scale.dtype, device=scale.device)
        _run("bn_coefficients", [sums, scale, batch_invstd, mean, coef], table, impl)
        _run("bn_backward", [grad_h, coef], table, impl)
    sum_g, sum_g_xhat = sums[:, 0], sums[:, 1] * invstd  # dL/d(beta), dL/d(gamma)
    return grad_w, sum_g_xhat.to(bn_weight.dtype), sum_g.to(bn_bias.dtype).contiguous(), grad_h


@torch.library.custom_op("hwnas::mixed_depthwise_bn_relu_backward", mutates_args=())
def _bn_relu_backward(grad_ys: list[Tensor], hs: list[Tensor], weight: Tensor, bn_weight: Tensor, bn_bias: Tensor,
                      mean: Tensor, var: Tensor, channels: list[int], kernels: list[int], dilations: list[int],
                      strides: list[int], training: bool, eps: float, impl: str,
                      weight_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """grad weight (empty unless weight_grad), grad bn_weight, grad bn_bias, and dL/dh as one
    (N, C, H, W) tensor."""
    segments = _segments(channels, kernels, dilations, strides)
    grad_w, grad_g, grad_b, grad_h = _bn_relu_grads(grad_ys, hs, weight, bn_weight, bn_bias, mean, var, segments,
                                                    training, eps, impl, weight_grad, overwrite=False)
    assert grad_h is not None
    return grad_w, grad_g, grad_b, grad_h


@_bn_relu_backward.register_fake
def _(grad_ys: list[Tensor], hs: list[Tensor], weight: Tensor, bn_weight: Tensor, bn_bias: Tensor, mean: Tensor,
      var: Tensor, channels: list[int], kernels: list[int], dilations: list[int], strides: list[int], training: bool,
      eps: float, impl: str, weight_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return (torch.empty_like(weight) if weight_grad else weight.new_empty(0), torch.empty_like(bn_weight),
            torch.empty_like(bn_bias), weight.new_empty(input_shape(hs)))


@torch.library.custom_op("hwnas::mixed_depthwise_bn_relu_backward_", mutates_args=("hs",), device_types="cpu")
def _bn_relu_backward_(grad_ys: list[Tensor], hs: list[Tensor], weight: Tensor, bn_weight: Tensor, bn_bias: Tensor,
                       mean: Tensor, var: Tensor, channels: list[int], kernels: list[int], dilations: list[int],
                       strides: list[int], training: bool, eps: float,
                       weight_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """As mixed_depthwise_bn_relu_backward on the CPU's fast path, writing dL/dh over hs (no
    h-sized buffer, one pass less): for an h nothing reads after the backward."""
    segments = _segments(channels, kernels, dilations, strides)
    grad_w, grad_g, grad_b, _ = _bn_relu_grads(grad_ys, hs, weight, bn_weight, bn_bias, mean, var, segments,
                                               training, eps, "fast", weight_grad, overwrite=True)
    return grad_w, grad_g, grad_b


@_bn_relu_backward_.register_fake
def _(grad_ys: list[Tensor], hs: list[Tensor], weight: Tensor, bn_weight: Tensor, bn_bias: Tensor, mean: Tensor,
      var: Tensor, channels: list[int], kernels: list[int], dilations: list[int], strides: list[int], training: bool,
      eps: float, weight_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    return (torch.empty_like(weight) if weight_grad else weight.new_empty(0), torch.empty_like(bn_weight),
            torch.empty_like(bn_bias))


def _bn_relu_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    # overwrite_h: the backward writes dL/dh over the saved hs. Eager autograd and AOTAutograd
    # (backend "aot_eager") give exact gradients; Inductor's graphs of torch 2.13 do not (the fused
    # cell's dL/dx comes out wrong), so the front doors pass overwrite_h=False while compiling.
    hs, weight, bn_weight, bn_bias, given_mean, given_var, *geom, training, eps, impl, overwrite_h = inputs
    _, mean, var = output
    ctx.mark_non_differentiable(mean, var)
    ctx.save_for_backward(weight, bn_weight, bn_bias, mean, var, *hs)
    ctx.geometry, ctx.training, ctx.eps, ctx.impl = geom, training, eps, impl
    ctx.weight_grad, ctx.overwrite_h = weight.requires_grad, overwrite_h
    # Given statistics that require grad (a data-parallel run's global batch statistics, computed
    # outside the op) get their gradients too; running statistics never do.
    ctx.stats_grad = not training and any(t is not None and t.requires_grad for t in (given_mean, given_var))
    ctx.stats_dtypes = (given_mean.dtype, given_var.dtype) if ctx.stats_grad else None


def _bn_relu_backward_fn(ctx: Any, grad_ys: list[Tensor | None], _mean: Any, _var: Any) -> tuple[Any, ...]:
    weight, bn_weight, bn_bias, mean, var, *hs = ctx.saved_tensors
    args = (weight, bn_weight, bn_bias, mean, var, *ctx.geometry, ctx.training, ctx.eps)
    if ctx.overwrite_h and ctx.impl == "fast" and not weight.is_cuda:
        grad_w, grad_g, grad_b = torch.ops.hwnas.mixed_depthwise_bn_relu_backward_(grad_ys, hs, *args,
                                                                                   ctx.weight_grad)
        grad_hs = list(hs)  # now dL/dh; their version moved on: a second backward fails loudly
    else:
        grad_w, grad_g, grad_b, grad_h = torch.ops.hwnas.mixed_depthwise_bn_relu_backward(
            grad_ys, hs, *args, ctx.impl, ctx.weight_grad)
        grad_hs = _input_grads(grad_h, hs)
    grad_stats: tuple[Any, Any] = (None, None)
    if ctx.stats_grad:  # y = gamma (h - mean) invstd + beta: dL/dmean, dL/dvar from dL/dbeta, dL/dgamma
        gamma_invstd = bn_weight.to(var.dtype) * torch.rsqrt(var + ctx.eps)
        grad_stats = ((-gamma_invstd * grad_b.to(var.dtype)).to(ctx.stats_dtypes[0]),
                      (-0.5 * gamma_invstd * torch.rsqrt(var + ctx.eps) * grad_g.to(var.dtype)).to(ctx.stats_dtypes[1]))
    return (grad_hs, grad_w if ctx.weight_grad else None, grad_g, grad_b, *grad_stats, *(None,) * 8)


_bn_relu.register_autograd(_bn_relu_backward_fn, setup_context=_bn_relu_setup)


# --- the Python front doors ------------------------------------------------------------------


def mixed_depthwise(x: Tensor | Sequence[Tensor], weight: Tensor, segments: Sequence[SegmentSpec],
                    impl: str = "fast") -> list[Tensor]:
    """Depthwise conv of each channel segment of x with its own kernel/dilation/stride
    (MixConv: Tan and Le, BMVC 2019).

    x: one (N, C, H, W) tensor of all segments' channels, or one (N, channels, H, W) tensor
    per segment. weight is the flat concatenation of each segment's (channels, k, k) weights. Returns one
    (N, channels, h_out, w_out) tensor per segment. On the CPU, impl="fast" runs the plane
    forms of the math, impl="elementwise" the per-element forms the CUDA kernels use.
    """
    _check_impl(impl)
    return list(torch.ops.hwnas.mixed_depthwise(_as_inputs(x), weight, *geometry(segments), impl))


def mixed_depthwise_bn_relu(h: Tensor | Sequence[Tensor], weight: Tensor, segments: Sequence[SegmentSpec],
                            bn_weight: Tensor, bn_bias: Tensor, running_mean: Tensor, running_var: Tensor,
                            training: bool, momentum: float = 0.1, eps: float = 1e-5, impl: str = "fast",
                            overwrite_h: bool = False) -> list[Tensor]:
    """mixed_depthwise(relu(batch_norm(h))): the batch norm over h's channels (training:
    batch statistics, updating running_mean/var in place as F.batch_norm does; eval: the
    running ones) and the ReLU applied inside the kernel, on load. h: one tensor of all
    segments' channels, or one per segment (as mixed_depthwise's x).

    overwrite_h: the backward may write dL/dh over h (on the CPU's fast path: no h-sized
    buffer, one pass less); only for an h nothing else reads after the forward. Like
    nn.ReLU(inplace=True), the graph then allows one backward; a second fails loudly. Under
    torch.compile it is ignored (see _bn_relu_setup)."""
    _check_impl(impl)
    hs = _as_inputs(h)
    check_bn_inputs(sum(t.shape[1] for t in hs), weight.device, running_mean, running_var)
    stats = (None, None) if training else (running_mean, running_var)
    overwrite_h = overwrite_h and not torch.compiler.is_compiling()  # Inductor's graphs: see _bn_relu_setup
    ys, mean, var = torch.ops.hwnas.mixed_depthwise_bn_relu(hs, weight, bn_weight, bn_bias, *stats,
                                                            *geometry(segments), training, eps, impl, overwrite_h)
    if training:
        n, _, height, width = hs[0].shape
        update_running_stats(running_mean, running_var, mean, var, n * height * width, momentum)
    return list(ys)


def update_running_stats(running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor, count: int,
                         momentum: float) -> None:
    """As F.batch_norm in training: running = (1 - momentum) running + momentum batch, the
    variance unbiased. var: the batch's biased variance over count values per channel."""
    with torch.no_grad():
        running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        unbiased = var * (count / max(count - 1, 1))
        running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)


def reference_mixed_depthwise(x: Tensor, weights: Sequence[Tensor], segments: Sequence[SegmentSpec]) -> list[Tensor]:
    """The same computation with one torch conv2d per segment (the tests' reference)."""
    out, c = [], 0
    for w, s in zip(weights, segments):
        xs = x[:, c:c + s.channels]
        out.append(torch.nn.functional.conv2d(xs, w.view(s.channels, 1, s.kernel, s.kernel), stride=s.stride,
                                              padding=s.padding, dilation=s.dilation, groups=s.channels))
        c += s.channels
    return out
