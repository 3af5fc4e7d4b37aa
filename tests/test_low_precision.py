"""fp16/bf16 numerics of the kernels' CUDA path, rehearsed on the CPU where torch can show them."""

from __future__ import annotations

import random

import pytest
import torch

from hwnas.kernels import mixed_depthwise, reference_mixed_depthwise
from hwnas.kernels.ops import batch_statistics
from low_precision import UNIT_ROUNDOFF, boundary, misses, rounded, worst
from test_kernels import bn_inputs, inputs, random_segments, run_bn_relu


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


# --- the GPU tests' comparison scheme, rehearsed with torch's own fp16/bf16 CPU path ---------------
# torch in fp16/bf16 on the CPU stands in for the kernel's low-precision run. It rounds more than
# the kernel does (it also stores a = relu(bn(h)) in the dtype), so a scheme that holds for it
# holds with margin for the kernel. The GPU tests (tests/test_kernels.py) use the same scheme.

LOW = [torch.bfloat16, torch.float16]


def setting(seed):
    rng = random.Random(8 + seed)
    segments = random_segments(rng, 5, max_channels=16)
    h, weights = inputs(segments, n=4, h=20, w=20, seed=seed)
    return segments, h, weights, bn_inputs(h.shape[1], seed=seed)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("seed", range(2))
def test_depthwise_scheme_holds_for_a_low_precision_run(dtype, seed):
    segments, x, weights, _ = setting(seed)
    run = reference_mixed_depthwise(x.to(dtype), [w.to(dtype) for w in weights], segments)  # the stand-in
    flat = torch.cat([rounded(w, dtype).reshape(-1) for w in weights])
    ref = mixed_depthwise(rounded(x, dtype), flat, segments)
    for got, want in zip(run, ref):
        assert misses(got, want, dtype) == 0, worst(got, want, dtype)
    off = run[0].double().clone()
    off.view(-1)[7] += 20 * UNIT_ROUNDOFF[dtype] * ref[0].abs().max()  # an error of 20 roundings is caught
    assert misses(off, ref[0], dtype) == 1


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("seed", range(2))
def test_bn_relu_scheme_holds_for_a_low_precision_run(dtype, training, seed):
    segments, h, weights, bn = setting(seed)
    upstream = [torch.randn(o.shape, generator=torch.Generator().manual_seed(seed))
                for o in run_bn_relu(h, weights, segments, *bn, training, "fast")[0]]
    run, run_grads, _ = run_bn_relu(h.to(dtype), [w.to(dtype) for w in weights], segments, *bn, training, "fast",
                                    [u.to(dtype) for u in upstream], fused=False)
    bn64 = [b.double() for b in bn]
    hr = rounded(h, dtype)
    ref, ref_grads, _ = run_bn_relu(hr, [rounded(w, dtype) for w in weights], segments, *bn64, training, "fast",
                                    [rounded(u, dtype) for u in upstream])
    mean, var = (hr.mean(dim=(0, 2, 3)), hr.var(dim=(0, 2, 3), unbiased=False)) if training else bn64[2:]
    edge = boundary(hr, bn64[0], bn64[1], mean, var)
    assert edge.float().mean() < 1e-3  # the exclusion is a handful of elements, not a share
    for got, want in zip(run, ref):
        assert misses(got, want, dtype) == 0, worst(got, want, dtype)
    for i, (got, want) in enumerate(zip(run_grads[:4], ref_grads[:4])):  # dL/dh, dL/dw, dL/dgamma, dL/dbeta
        exclude = edge if i == 0 else None
        assert misses(got, want, dtype, exclude) == 0, (i, worst(got, want, dtype, exclude))


def test_fp32_reference_misses_in_bf16():
    """What the scheme replaces: a reference on the unrounded fp32 inputs, with one flat
    tolerance (3e-2 forward, 5e-2 backward), misses in bf16 wherever rounding h, w or the
    upstream gradient moved a value or flipped a ReLU mask."""
    segments, h, weights, bn = setting(0)
    ref, ref_grads, upstream = run_bn_relu(h, weights, segments, *bn, True, "fast")
    run, run_grads, _ = run_bn_relu(h.to(torch.bfloat16), [w.to(torch.bfloat16) for w in weights], segments, *bn,
                                    True, "fast", [u.to(torch.bfloat16) for u in upstream], fused=False)
    missed = sum(int((~torch.isclose(a.float(), b, rtol=3e-2, atol=3e-2)).sum()) for a, b in zip(run, ref))
    missed += sum(int((~torch.isclose(a.float(), b, rtol=5e-2, atol=5e-2)).sum())
                  for a, b in zip(run_grads[:4], ref_grads[:4]))
    assert missed > 10
