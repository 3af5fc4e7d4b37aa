"""Comparing an fp16/bf16 result with a reference, for the kernels' GPU tests and their CPU rehearsal.

The reference is computed in float64 from the SAME rounded inputs the low-precision run got
(inputs, weights, upstream gradients rounded to its dtype): rounding the inputs is part of the
question asked, not an error of the kernel. What is left is the kernel's own error:
- each stored result rounded once to the dtype: relative error <= u (unit roundoff);
- intermediates stored in the dtype (dL/da between the CUDA backward passes; in torch's
  own low-precision path also the activation a = relu(bn(h))): errors relative to the terms
  of the sums that use them, not to the result, which may cancel. The tolerance bounds them
  by u times the tensor's largest reference value.
- ReLU masks: the kernels decide them in fp32 (z = h * scale + shift, scale and shift from
  fp32 batch statistics); where z lies within fp32 rounding of zero the run and the float64
  reference may take opposite sides, and dL/dh there moves by O(|dL/da| * gamma * invstd),
  not by a rounding. Those elements of dL/dh are excluded, and only those. (With a reference
  on unrounded inputs the masks differ wherever rounding h to the dtype crosses zero: about 1%
  of the elements in bf16, which is what made such comparisons miss.)
"""

from __future__ import annotations

import torch

UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24}
# Tolerance in units of u: one rounding of the stored result, one of a stored intermediate,
# and the sums' terms being up to ~2x the tensor's largest value; 8 leaves a factor ~2 of slack
# over the worst seen in the rehearsal (tests/test_low_precision.py).
ROUNDINGS = 8.0
# Pre-activations within this many fp32 roundings (of |h - mean| * scale + |mean| * scale + |beta|)
# of zero count as on the ReLU boundary: the fp32 batch mean of up to ~1e6 values is accurate
# to a few hundred roundings of its magnitude (pairwise sums), and the products add a few more.
BOUNDARY_ROUNDINGS = 1024.0


def rounded(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The value a `dtype` run sees, as float64 for the reference."""
    return t.detach().to(dtype).to(torch.float64)


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


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "",
                   exclude: torch.Tensor | None = None, fp32_tol: float = 1e-5) -> None:
    """fp16/bf16: within ROUNDINGS unit roundoffs (above). fp32: within fp32_tol, absolute and
    relative: there the difference is the order of fp32 sums over up to N*H*W terms, not one
    rounding of the result."""
    if dtype == torch.float32:
        a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
        bad = (a - e).abs() > fp32_tol * (1 + e.abs())
        if exclude is not None:
            bad &= ~exclude.cpu()
        assert not bad.any(), f"{what}: {int(bad.sum())} elements off by up to {float((a - e).abs().max()):.3g}"
        return
    count = misses(actual, expected, dtype, exclude)
    assert count == 0, f"{what}: {count} elements off, worst {worst(actual, expected, dtype, exclude):.2f} roundings"
