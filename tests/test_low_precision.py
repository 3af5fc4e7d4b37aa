"""fp16/bf16 numerics of the kernels' CUDA path, rehearsed on the CPU where torch can show them."""

from __future__ import annotations

import pytest
import torch

from hwnas.kernels.ops import batch_statistics


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_batch_statistics_are_taken_in_fp32(dtype):
    """A mean that dwarfs the spread: rounded to the storage dtype it moves x_hat by O(0.1)."""
    gen = torch.Generator().manual_seed(0)
    h = (100 + torch.randn(4, 6, 9, 9, generator=gen)).to(dtype)
    parts = [h[:, :2].contiguous(), h[:, 2:].contiguous()]
    mean, var = batch_statistics(parts, torch.float32)
    exact = h.double()  # the reference: float64 statistics of the same rounded values
    ref_mean, ref_var = exact.mean(dim=(0, 2, 3)), exact.var(dim=(0, 2, 3), unbiased=False)
    assert mean.dtype == var.dtype == torch.float32
    # fp32 accumulation over 324 values near 100: relative error ~1e-6 on the mean; the variance
    # (about 1 here, the values' bf16 spacing is 0.5) comes out to ~1e-4 of itself.
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-4, atol=0)
