"""The segment table of the mixed depthwise kernel, and the checks on its inputs.

Mirrors `struct SegmentTable` of kernels/mixed_dw.h (the loaders compare its size with the
compiled one). One segment per branch: its channels in the concatenated hidden tensor, its
kernel size, dilation, stride; its weight block offset; where its output block lives (each
segment's output, and in the backward pass its gradient, is a tensor of its own).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

MAX_SEGMENTS = 32
SOURCE_DIR = Path(__file__).resolve().parents[2] / "kernels"


class CSegment(ctypes.Structure):
    _fields_ = [("c_begin", ctypes.c_int), ("channels", ctypes.c_int), ("kernel", ctypes.c_int),
                ("dilation", ctypes.c_int), ("stride", ctypes.c_int), ("padding", ctypes.c_int),
                ("h_out", ctypes.c_int), ("w_out", ctypes.c_int), ("out_offset", ctypes.c_longlong),
                ("weight_offset", ctypes.c_longlong), ("block", ctypes.c_ulonglong)]


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


def check_inputs(x: torch.Tensor, weight: torch.Tensor, segments: Sequence[SegmentSpec]) -> None:
    """Clear errors for wrong dtype, device, layout, segment table or shape."""
    check_segments(segments)
    if x.dim() != 4:
        raise KernelInputError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype != weight.dtype:
        raise KernelInputError(f"x and weight must have one dtype, got {x.dtype} and {weight.dtype}")
    allowed = (torch.float32, torch.float16, torch.bfloat16) if x.is_cuda else (torch.float32, torch.float64)
    if x.dtype not in allowed:
        raise KernelInputError(f"dtype {x.dtype} not supported on {x.device.type}; use one of {allowed}")
    if x.device != weight.device:
        raise KernelInputError(f"x is on {x.device}, weight on {weight.device}")
    if not x.is_contiguous() or not weight.is_contiguous():
        raise KernelInputError("x and weight must be contiguous (NCHW); call .contiguous()")
    channels = sum(s.channels for s in segments)
    if x.shape[1] != channels:
        raise KernelInputError(f"x has {x.shape[1]} channels, the segments {channels}")
    taps = sum(s.channels * s.kernel * s.kernel for s in segments)
    if weight.dim() != 1 or weight.numel() != taps:
        raise KernelInputError(f"weight must be the flat concatenation of the segments' (channels, k, k) "
                               f"blocks: {taps} values, got shape {tuple(weight.shape)}")
    if min(x.shape) < 1:
        raise KernelInputError(f"x has an empty dimension: {tuple(x.shape)}")


def check_bn_inputs(h: torch.Tensor, *per_channel: torch.Tensor) -> None:
    """The batch norm prologue's parameters and statistics: one value per channel of h."""
    for t in per_channel:
        if t.shape != (h.shape[1],):
            raise KernelInputError(f"batch norm parameters and statistics need shape ({h.shape[1]},), "
                                   f"got {tuple(t.shape)}")
        if t.device != h.device:
            raise KernelInputError(f"h is on {h.device}, a batch norm tensor on {t.device}")


def output_shapes(x_shape: Sequence[int], segments: Sequence[SegmentSpec]) -> list[torch.Size]:
    n, _, h, w = x_shape
    return [torch.Size((n, s.channels, s.out_size(h), s.out_size(w))) for s in segments]


def segment_table(x: torch.Tensor, segments: Sequence[SegmentSpec],
                  blocks: Sequence[torch.Tensor] | None = None) -> tuple[CSegmentTable, int]:
    """The C table for input x and the total number of output elements.

    blocks: one contiguous (N, channels, h_out, w_out) tensor per segment, on x's device and of
    its dtype: the outputs the forward kernel writes, or the output gradients the backward
    kernels read. The table holds their addresses; the caller keeps them alive during the call.
    """
    n, c, h, w = x.shape
    shapes = output_shapes(x.shape, segments)
    if blocks is not None:
        for i, (b, shape) in enumerate(zip(blocks, shapes, strict=True)):
            if b.shape != shape or not b.is_contiguous() or b.dtype != x.dtype or b.device != x.device:
                raise KernelInputError(f"segment {i}: its block must be a contiguous {x.dtype} tensor of shape "
                                       f"{tuple(shape)} on {x.device}, got {b.dtype} {tuple(b.shape)} on {b.device}")
    table = CSegmentTable(count=len(segments), N=n, C=c, H=h, W=w)
    c_begin = out_offset = weight_offset = 0
    for i, (s, shape) in enumerate(zip(segments, shapes)):
        table.seg[i] = CSegment(c_begin, s.channels, s.kernel, s.dilation, s.stride, s.padding, shape[2], shape[3],
                                out_offset, weight_offset, blocks[i].data_ptr() if blocks is not None else 0)
        c_begin += s.channels
        out_offset += shape.numel()
        weight_offset += s.channels * s.kernel * s.kernel
    return table, out_offset
