"""`mixed_depthwise`: the kernel as a differentiable PyTorch op, on CPU (twin) or CUDA."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import torch

from hwnas.kernels.segments import SegmentSpec, check_inputs, segment_table, split_output


def _run_cpu(name: str, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, table: Any, impl: str) -> None:
    from hwnas.kernels.cpu import library

    suffix = "f64" if a.dtype == torch.float64 else "f32"
    variant = "" if impl == "elementwise" else "_fast"
    getattr(library(), f"mixed_dw_{name}{variant}_{suffix}")(a.data_ptr(), b.data_ptr(), out.data_ptr(),
                                                              ctypes.byref(table))


def _run(name: str, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, table: Any, total: int, impl: str) -> None:
    if a.is_cuda:
        from hwnas.kernels import cuda

        grid = total if name == "grad_weight" else None  # one block per weight tap
        cuda.launch(name, a.dtype, [a.data_ptr(), b.data_ptr(), out.data_ptr()], table,
                    total if name == "forward" else None, grid)
    else:
        _run_cpu(name, a, b, out, table, impl)


class MixedDepthwiseFn(torch.autograd.Function):
    """One output per segment, so autograd hands back one gradient per segment (views of a
    single flat output would each be backpropagated as a zero-filled full-size tensor)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, segments: tuple[SegmentSpec, ...],
                impl: str = "fast") -> tuple[torch.Tensor, ...]:
        check_inputs(x, weight, segments)
        table, total = segment_table(x.shape, segments)
        y = torch.empty(total, dtype=x.dtype, device=x.device)
        _run("forward", x, weight, y, table, total, impl)
        ctx.save_for_backward(x, weight)
        ctx.segments, ctx.impl = segments, impl
        return tuple(split_output(y, x.shape, segments))

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        x, weight = ctx.saved_tensors
        table, _ = segment_table(x.shape, ctx.segments)
        parts = [g.reshape(-1) if g is not None else x.new_zeros(shape.numel())
                 for g, shape in zip(grads, _output_shapes(x.shape, ctx.segments))]
        grad_y = torch.cat(parts).contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.empty_like(x)
            _run("grad_input", grad_y, weight, grad_x, table, x.numel(), ctx.impl)
        if ctx.needs_input_grad[1]:
            grad_w = torch.empty_like(weight)
            _run("grad_weight", x, grad_y, grad_w, table, weight.numel(), ctx.impl)
        return grad_x, grad_w, None, None


def _output_shapes(x_shape: Sequence[int], segments: Sequence[SegmentSpec]) -> list[torch.Size]:
    n, _, h, w = x_shape
    return [torch.Size((n, s.channels, s.out_size(h), s.out_size(w))) for s in segments]


def mixed_depthwise(x: torch.Tensor, weight: torch.Tensor, segments: Sequence[SegmentSpec],
                    impl: str = "fast") -> list[torch.Tensor]:
    """Depthwise conv of each channel segment of x with its own kernel/dilation/stride.

    weight is the flat concatenation of each segment's (channels, k, k) weights. Returns one
    (N, channels, h_out, w_out) tensor per segment. On the CPU, impl="fast" runs the plane
    forms of the math, impl="elementwise" the per-element forms the CUDA kernels use.
    """
    if impl not in ("fast", "elementwise"):
        raise ValueError(f"impl must be 'fast' or 'elementwise', got {impl!r}")
    return list(MixedDepthwiseFn.apply(x, weight, tuple(segments), impl))


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
