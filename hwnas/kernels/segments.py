"""The segment table of the mixed depthwise kernel, and the checks on its inputs.

Mirrors `struct SegmentTable` of kernels/mixed_dw.h (the loaders compare its size with the
compiled one). One segment per branch: its channels in the concatenated hidden tensor, its
kernel size, dilation, stride; its weight block offset; where its input channels and its
output block live (the input: channels of one concatenated tensor, or a tensor per segment;
each segment's output, and in the backward pass its gradient, is a tensor of its own).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
import torch

MAX_SEGMENTS = 32


class CSegment(ctypes.Structure):
    _fields_ = [("c_begin", ctypes.c_int), ("channels", ctypes.c_int), ("kernel", ctypes.c_int),
                ("dilation", ctypes.c_int), ("stride", ctypes.c_int), ("padding", ctypes.c_int),
                ("h_out", ctypes.c_int), ("w_out", ctypes.c_int), ("out_offset", ctypes.c_longlong),
                ("weight_offset", ctypes.c_longlong), ("out_block", ctypes.c_ulonglong),
                ("in_block", ctypes.c_ulonglong), ("in_batch_stride", ctypes.c_longlong)]


class CSegmentTable(ctypes.Structure):
    _fields_ = [("count", ctypes.c_int), ("N", ctypes.c_int), ("C", ctypes.c_int), ("H", ctypes.c_int),
                ("W", ctypes.c_int), ("seg", CSegment * MAX_SEGMENTS)]


@dataclass(frozen=True)
class SegmentSpec:
    channels: int
    kernel: int
    dilation: int = 1
    stride: int = 1

    @property
    def padding(self) -> int:
        return self.dilation * (self.kernel - 1) // 2

    def out_size(self, size: int) -> int:
        return (size + 2 * self.padding - self.dilation * (self.kernel - 1) - 1) // self.stride + 1


class KernelInputError(ValueError):
    """An input the mixed depthwise kernel cannot take; says which and why."""


def check_segments(segments: Sequence[SegmentSpec]) -> None:
    if not 1 <= len(segments) <= MAX_SEGMENTS:
        raise KernelInputError(f"need 1..{MAX_SEGMENTS} segments, got {len(segments)}")
    for i, s in enumerate(segments):
        if s.channels < 1:
            raise KernelInputError(f"segment {i}: channels must be >= 1, got {s.channels}")
        if s.kernel < 1 or s.kernel % 2 == 0 or s.kernel > 31:
            raise KernelInputError(f"segment {i}: kernel must be odd, 1..31, got {s.kernel}")
        if s.dilation < 1 or s.stride not in (1, 2):
            raise KernelInputError(f"segment {i}: dilation must be >= 1 and stride 1 or 2, got "
                                   f"dilation {s.dilation}, stride {s.stride}")


def check_inputs(xs: Sequence[torch.Tensor], weight: torch.Tensor, segments: Sequence[SegmentSpec]) -> None:
    """Clear errors for wrong dtype, device, layout, segment table or shape.

    xs: the input as one (N, C, H, W) tensor of all segments' channels, or one
    (N, channels, H, W) tensor per segment."""
    check_segments(segments)
    if len(xs) not in (1, len(segments)):
        raise KernelInputError(f"give one input tensor of all channels or one per segment ({len(segments)}), "
                               f"got {len(xs)}")
    x = xs[0]
    for t in xs:
        if t.dim() != 4:
            raise KernelInputError(f"x must be (N, C, H, W), got shape {tuple(t.shape)}")
        if t.dtype != weight.dtype:
            raise KernelInputError(f"x and weight must have one dtype, got {t.dtype} and {weight.dtype}")
        if t.device != weight.device:
            raise KernelInputError(f"x is on {t.device}, weight on {weight.device}")
        if not t.is_contiguous():
            raise KernelInputError("x and weight must be contiguous (NCHW); call .contiguous()")
        if t.shape[0] != x.shape[0] or t.shape[2:] != x.shape[2:]:
            raise KernelInputError(f"the per-segment inputs differ in batch or size: {tuple(t.shape)} and "
                                   f"{tuple(x.shape)}")
    allowed = (torch.float32, torch.float16, torch.bfloat16) if x.is_cuda else (torch.float32, torch.float64)
    if x.dtype not in allowed:
        raise KernelInputError(f"dtype {x.dtype} not supported on {x.device.type}; use one of {allowed}")
    if not weight.is_contiguous():
        raise KernelInputError("x and weight must be contiguous (NCHW); call .contiguous()")
    wanted = [sum(s.channels for s in segments)] if len(xs) == 1 else [s.channels for s in segments]
    got = [t.shape[1] for t in xs]
    if got != wanted:
        raise KernelInputError(f"x has {got} channels, the segments {wanted}")
    taps = sum(s.channels * s.kernel * s.kernel for s in segments)
    if weight.dim() != 1 or weight.numel() != taps:
        raise KernelInputError(f"weight must be the flat concatenation of the segments' (channels, k, k) "
                               f"blocks: {taps} values, got shape {tuple(weight.shape)}")
    if min(x.shape) < 1:
        raise KernelInputError(f"x has an empty dimension: {tuple(x.shape)}")


def check_bn_inputs(channels: int, device: torch.device, *per_channel: torch.Tensor) -> None:
    """The batch norm prologue's parameters and statistics: one value per input channel."""
    for t in per_channel:
        if t.shape != (channels,):
            raise KernelInputError(f"batch norm parameters and statistics need shape ({channels},), "
                                   f"got {tuple(t.shape)}")
        if t.device != device:
            raise KernelInputError(f"h is on {device}, a batch norm tensor on {t.device}")


def output_shapes(x_shape: Sequence[int], segments: Sequence[SegmentSpec]) -> list[torch.Size]:
    n, _, h, w = x_shape
    return [torch.Size((n, s.channels, s.out_size(h), s.out_size(w))) for s in segments]


def input_shape(xs: Sequence[torch.Tensor]) -> torch.Size:
    """The logical (N, C, H, W) of the input, one tensor or one per segment."""
    n, _, h, w = xs[0].shape
    return torch.Size((n, sum(t.shape[1] for t in xs), h, w))


def segment_table(xs: Sequence[torch.Tensor], segments: Sequence[SegmentSpec],
                  blocks: Sequence[torch.Tensor] | None = None) -> tuple[CSegmentTable, int]:
    """The C table for the input and the total number of output elements.

    xs: one (N, C, H, W) tensor of all channels or one tensor per segment (check_inputs);
    the kernels read (and CPU grad_input_bn overwrites) them through the table.
    blocks: one contiguous (N, channels, h_out, w_out) tensor per segment, on the input's device
    and of its dtype: the outputs the forward kernel writes, or the output gradients the backward
    kernels read. The table holds addresses; the caller keeps the tensors alive during the call.
    """
    n, c, h, w = shape = input_shape(xs)
    shapes = output_shapes(shape, segments)
    x = xs[0]
    if blocks is not None:
        for i, (b, out_shape) in enumerate(zip(blocks, shapes, strict=True)):
            if b.shape != out_shape or not b.is_contiguous() or b.dtype != x.dtype or b.device != x.device:
                raise KernelInputError(f"segment {i}: its block must be a contiguous {x.dtype} tensor of shape "
                                       f"{tuple(out_shape)} on {x.device}, got {b.dtype} {tuple(b.shape)} on {b.device}")
    table = CSegmentTable(count=len(segments), N=n, C=c, H=h, W=w)
    c_begin = out_offset = weight_offset = 0
    for i, (s, out_shape) in enumerate(zip(segments, shapes)):
        if len(xs) == 1:  # channels c_begin.. of the one concatenated tensor
            in_block, in_batch_stride = x.data_ptr() + c_begin * h * w * x.element_size(), c * h * w
        else:
            in_block, in_batch_stride = xs[i].data_ptr(), s.channels * h * w
        table.seg[i] = CSegment(c_begin, s.channels, s.kernel, s.dilation, s.stride, s.padding, out_shape[2],
                                out_shape[3], out_offset, weight_offset,
                                blocks[i].data_ptr() if blocks is not None else 0, in_block, in_batch_stride)
        c_begin += s.channels
        out_offset += out_shape.numel()
        weight_offset += s.channels * s.kernel * s.kernel
    return table, out_offset
