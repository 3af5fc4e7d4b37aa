"""The fused multi-branch kernel: mixed depthwise convolution (CUDA, and its CPU twin)."""

from hwnas.kernels.ops import mixed_depthwise, mixed_depthwise_bn_relu, reference_mixed_depthwise
from hwnas.kernels.segments import KernelInputError, SegmentSpec

__all__ = ["KernelInputError", "SegmentSpec", "mixed_depthwise", "mixed_depthwise_bn_relu",
           "reference_mixed_depthwise"]
