"""How close a kernel's result must be to its reference: the comparison scheme of every check.

The reference is computed in float64 from the SAME rounded inputs the run got (inputs, weights,
upstream gradients rounded to its dtype): rounding the inputs is part of the question asked, not
an error of the kernel. What is left is the kernel's own error:
- fp16/bf16: each stored result rounded once to the dtype: relative error <= u (unit roundoff);
  intermediates stored in the dtype (dL/da between the CUDA backward passes; in torch's own
  low-precision path also the activation a = relu(bn(h))): errors relative to the terms of the
  sums that use them, not to the result, which may cancel. The tolerance bounds them by u times
  the tensor's largest reference value: ROUNDINGS * u * (|expected| + max |expected|).
- fp32 and fp64: the difference is the order of the sums over up to N*H*W terms, not one
  rounding of the result: an absolute-and-relative bound, TOLERANCE * (1 + |expected|), ten
  times wider for gradients and batch statistics (sums over the batch) than for outputs.
- ReLU masks: the kernels decide them in fp32 (z = h * scale + shift, scale and shift from
  fp32 batch statistics); where z lies within fp32 rounding of zero the run and the float64
  reference may take opposite sides, and dL/dh there moves by O(|dL/da| * gamma * invstd), not
  by a rounding. Those elements of dL/dh are excluded (`boundary`), and only those. (With a
  reference on unrounded inputs the masks differ wherever rounding h to the dtype crosses zero:
  about 1% of the elements in bf16, which is what made such comparisons miss.)

tests/test_low_precision.py rehearses the fp16/bf16 scheme with torch's own low-precision path
on the CPU, and shows that an error of 20 roundings is caught.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24, torch.float64: 2.0**-53}
# Tolerance in units of u: one rounding of the stored result, one of a stored intermediate,
# and the sums' terms being up to ~2x the tensor's largest value; 8 leaves a factor ~2 of slack
# over the worst seen in the rehearsal (tests/test_low_precision.py).
ROUNDINGS = 8.0
# Pre-activations within this many fp32 roundings (of |h - mean| * scale + |mean| * scale + |beta|)
# of zero count as on the ReLU boundary: the fp32 batch mean of up to ~1e6 values is accurate
# to a few hundred roundings of its magnitude (pairwise sums), and the products add a few more.
BOUNDARY_ROUNDINGS = 1024.0
# fp32/fp64: outputs (one sum over the taps), and gradients and statistics (sums over the batch).
TOLERANCE = {torch.float32: (1e-5, 1e-4), torch.float64: (1e-10, 1e-9)}
LOW = (torch.float16, torch.bfloat16)


def rounded(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The value a `dtype` run sees, as float64 on the CPU for the reference."""
    return t.detach().to(dtype).to("cpu", torch.float64)


def boundary(h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
             eps: float = 1e-5) -> torch.Tensor:
    """Elements of h whose pre-activation z = (h - mean) / sqrt(var + eps) * gamma + beta lies
    within fp32 rounding of 0 (mean/var: the statistics the forward used)."""
    shape = (1, -1, 1, 1)
    h, mean = h.detach().double().cpu(), mean.detach().double().cpu().view(shape)
    scale = torch.rsqrt(var.detach().double().cpu().view(shape) + eps) * gamma.detach().double().cpu().view(shape)
    beta = beta.detach().double().cpu().view(shape)
    z = (h - mean) * scale + beta
    magnitude = ((h - mean).abs() + mean.abs()) * scale.abs() + beta.abs()
    return z.abs() <= BOUNDARY_ROUNDINGS * UNIT_ROUNDOFF[torch.float32] * magnitude


def allowed(expected: torch.Tensor, dtype: torch.dtype, gradient: bool = False,
            roundings: float = ROUNDINGS) -> torch.Tensor:
    """The largest difference each element may have from its (float64) expected value."""
    e = expected.detach().double().cpu().abs()
    if dtype in LOW:
        return roundings * UNIT_ROUNDOFF[dtype] * (e + (e.max() if e.numel() else 0.0))
    return TOLERANCE[dtype][int(gradient)] * (1 + e)


def describe(dtype: torch.dtype, gradient: bool = False, roundings: float = ROUNDINGS) -> str:
    """The tolerance in words, for reports."""
    if dtype in LOW:
        return f"{roundings:g} {str(dtype).removeprefix('torch.')} roundings of |ref| + max|ref|"
    return f"{TOLERANCE[dtype][int(gradient)]:g} x (1 + |ref|)"


@dataclass(frozen=True)
class Comparison:
    """One quantity against its reference: `worst` is the largest |actual - expected| over its
    allowed difference (<= 1 passes; inf for a NaN, an infinity or a wrong shape)."""

    what: str
    worst: float
    max_error: float
    elements: int
    excluded: int
    tolerance: str

    @property
    def ok(self) -> bool:
        return self.worst <= 1.0

    def to_dict(self) -> dict[str, Any]:
        """As JSON takes it: a NaN or infinite error becomes null (strict JSON has neither)."""
        finite = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in asdict(self).items()}
        return {**finite, "ok": self.ok}


def compare(what: str, actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, gradient: bool = False,
            exclude: torch.Tensor | None = None, roundings: float = ROUNDINGS) -> Comparison:
    """`actual` (a `dtype` run) against `expected` (float64, from the same rounded inputs);
    `roundings`: fp16/bf16's tolerance in unit roundoffs."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    tolerance = describe(dtype, gradient, roundings)
    if a.shape != e.shape:
        return Comparison(f"{what} (shape {tuple(a.shape)}, expected {tuple(e.shape)})", float("inf"),
                          float("inf"), e.numel(), 0, tolerance)
    error = (a - e).abs()
    ratio = error / allowed(e, dtype, gradient, roundings).clamp_min(1e-300)
    ratio = torch.nan_to_num(ratio, nan=float("inf"), posinf=float("inf"))
    excluded = 0
    if exclude is not None:
        mask = exclude.cpu().expand_as(ratio)
        ratio, excluded = ratio.masked_fill(mask, 0.0), int(mask.sum())
        error = error.masked_fill(mask, 0.0)
    worst = float(ratio.max()) if ratio.numel() else 0.0
    max_error = float(torch.nan_to_num(error, nan=float("inf")).max()) if error.numel() else 0.0
    return Comparison(what, worst, max_error, e.numel(), excluded, tolerance)


def misses(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype,
           exclude: torch.Tensor | None = None) -> int:
    """How many elements differ by more than ROUNDINGS * u * (|expected| + max |expected|)."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    tol = ROUNDINGS * UNIT_ROUNDOFF[dtype] * (e.abs() + e.abs().max())
    bad = (a - e).abs() > tol
    if exclude is not None:
        bad &= ~exclude.cpu()
    return int(bad.sum())


def worst(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype,
          exclude: torch.Tensor | None = None) -> float:
    """The largest error in units of u * (|expected| + max |expected|): below ROUNDINGS passes."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    ratio = (a - e).abs() / (UNIT_ROUNDOFF[dtype] * (e.abs() + e.abs().max()) + 1e-300)
    if exclude is not None:
        ratio = ratio.masked_fill(exclude.cpu(), 0)
    return float(ratio.max())
