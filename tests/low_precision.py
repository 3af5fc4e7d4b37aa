"""Comparing a kernel's result with its reference, for the kernels' GPU tests and their CPU rehearsal.

The scheme and its reasoning live in the package (hwnas/selfcheck/tolerance.py), which the
self-check (`hwnas env --check`) and the fused layer's first-use check use too: tests and product
judge a kernel by one rule.
"""

from __future__ import annotations

import torch

from hwnas.selfcheck.tolerance import (BOUNDARY_ROUNDINGS, ROUNDINGS, UNIT_ROUNDOFF, boundary, compare,  # noqa: F401
                                       misses, rounded, worst)


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "",
                   exclude: torch.Tensor | None = None, fp32_tol: float = 1e-5) -> None:
    """fp16/bf16: within ROUNDINGS unit roundoffs. fp32: within fp32_tol, absolute and relative
    (1e-5: an output; 1e-4: a gradient or a statistic, sums over the batch)."""
    result = compare(what, actual, expected, dtype, gradient=fp32_tol > 1e-5, exclude=exclude)
    assert result.ok, (f"{what}: off by up to {result.max_error:.3g}, {result.worst:.2f} times the tolerance "
                       f"({result.tolerance})")
