"""The kernel as torch operators: torch.library.opcheck of every op (schema, fake tensors,
autograd registration, AOT dispatch), and the fused cell under
torch.compile(fullgraph=True) against the eager reference cell."""

from __future__ import annotations

import copy

import pytest
import torch

from hwnas.kernels import SegmentSpec
from hwnas.kernels.ops import geometry, reference_mixed_depthwise
from hwnas.spaces import builtin
from hwnas.spaces.macro import Position
from hwnas.supernet import SupernetCell
from hwnas.supernet.fused import FusedSupernetCell

SEGMENTS = [SegmentSpec(2, 3), SegmentSpec(1, 5, 2, 2), SegmentSpec(2, 1)]
GEOMETRY = geometry(SEGMENTS)
DTYPES = [torch.float32, torch.float64]


def sample(dtype, per_segment, grad=True, seed=0):
    """Inputs (one tensor or one per segment), flat weights, BN affine and statistics."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 5, 7, 6, generator=gen, dtype=dtype)
    xs = [t.contiguous() for t in x.split([s.channels for s in SEGMENTS], 1)] if per_segment else [x]
    weight = torch.randn(sum(s.channels * s.kernel ** 2 for s in SEGMENTS), generator=gen, dtype=dtype)
    gamma = torch.rand(5, generator=gen, dtype=dtype) + 0.5
    beta = torch.randn(5, generator=gen, dtype=dtype) * 0.5
    mean, var = torch.randn(5, generator=gen, dtype=dtype) * 0.1, torch.rand(5, generator=gen, dtype=dtype) + 0.5
    for t in (*xs, weight, gamma, beta):
        t.requires_grad_(grad)
    return xs, weight, gamma, beta, mean, var


def out_grads(dtype, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 2, 7, 6, generator=gen, dtype=dtype), torch.randn(2, 1, 4, 3, generator=gen, dtype=dtype),
            torch.randn(2, 2, 7, 6, generator=gen, dtype=dtype)]


@pytest.mark.parametrize("per_segment", [False, True], ids=["concatenated", "per_segment"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck_mixed_depthwise(dtype, per_segment):
    xs, weight, *_ = sample(dtype, per_segment)
    torch.library.opcheck(torch.ops.hwnas.mixed_depthwise, (xs, weight, *GEOMETRY, "fast"))
    xs, weight, *_ = sample(dtype, per_segment, grad=False)
    grads = out_grads(dtype)
    torch.library.opcheck(torch.ops.hwnas.mixed_depthwise_grad_input, (grads, xs, weight, *GEOMETRY, "fast"))
    torch.library.opcheck(torch.ops.hwnas.mixed_depthwise_grad_weight, (grads, xs, weight, *GEOMETRY, "elementwise"))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck_mixed_depthwise_bn_relu(dtype, training):
    xs, weight, gamma, beta, mean, var = sample(dtype, per_segment=True)
    stats = (None, None) if training else (mean, var)
    torch.library.opcheck(torch.ops.hwnas.mixed_depthwise_bn_relu,
                          (xs, weight, gamma, beta, *stats, *GEOMETRY, training, 1e-5, "fast", False))


@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck_bn_relu_backward_ops(dtype):
    """The functional backward, and the CPU's in-place one (declared to mutate hs)."""
    xs, weight, gamma, beta, mean, var = sample(dtype, per_segment=True, grad=False)
    grads = out_grads(dtype)
    for impl in ("fast", "elementwise"):
        torch.library.opcheck(torch.ops.hwnas.mixed_depthwise_bn_relu_backward,
                              (grads, xs, weight, gamma, beta, mean, var, *GEOMETRY, True, 1e-5, impl, True))
    torch.library.opcheck(torch.ops.hwnas.mixed_depthwise_bn_relu_backward_,
                          (grads, xs, weight, gamma, beta, mean, var, *GEOMETRY, True, 1e-5, False))


def test_in_place_backward_writes_what_the_functional_one_returns():
    xs, weight, gamma, beta, mean, var = sample(torch.float64, per_segment=True, grad=False)
    grads = out_grads(torch.float64)
    args = (weight, gamma, beta, mean, var, *GEOMETRY, True, 1e-5)
    *want, grad_h = torch.ops.hwnas.mixed_depthwise_bn_relu_backward(grads, xs, *args, "fast", True)
    got = torch.ops.hwnas.mixed_depthwise_bn_relu_backward_(grads, xs, *args, True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.cat(xs, 1), grad_h, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", ["fast", "elementwise"])
def test_given_statistics_get_their_gradients(impl):
    """Eval mode with statistics that require grad (a data-parallel run's global ones): every
    gradient, the statistics' included, as autograd gives them through torch's own ops."""
    xs, weight, gamma, beta, mean, var = sample(torch.float64, per_segment=True)
    mean.requires_grad_()
    var.requires_grad_()
    ys, _, _ = torch.ops.hwnas.mixed_depthwise_bn_relu(xs, weight, gamma, beta, mean, var, *GEOMETRY, False, 1e-5,
                                                       impl, False)
    grads = out_grads(torch.float64)
    inputs = (*xs, weight, gamma, beta, mean, var)
    got = torch.autograd.grad(sum((y * g).sum() for y, g in zip(ys, grads)), inputs)
    a = torch.relu((torch.cat(xs, 1) - mean.view(1, -1, 1, 1)) * torch.rsqrt(var + 1e-5).view(1, -1, 1, 1)
                   * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1))
    weights = [w.view(s.channels, s.kernel, s.kernel) for w, s in
               zip(weight.split([s.channels * s.kernel ** 2 for s in SEGMENTS]), SEGMENTS)]
    ref = reference_mixed_depthwise(a, weights, SEGMENTS)
    want = torch.autograd.grad(sum((y * g).sum() for y, g in zip(ref, grads)), inputs)
    for name, g, w in zip(["h0", "h1", "h2", "weight", "gamma", "beta", "mean", "var"], got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10, msg=name)
    torch.library.opcheck(torch.ops.hwnas.mixed_depthwise_bn_relu,
                          (xs, weight, gamma, beta, mean, var, *GEOMETRY, False, 1e-5, impl, False))


SPACE = builtin().spaces["latency19"]


def test_fused_cell_compiles_whole():
    """torch.compile(fullgraph=True) of the fused cell, forward and backward, in training
    (dense and depthwise branches, BN running statistics), against the eager reference cell;
    the default in-place backward is set aside while compiling (hwnas.kernels.ops)."""
    torch.manual_seed(0)
    pos = Position("N", 4, 4, 6, 1)
    ops = [0, 4, 7, 9]  # dw k3 t1, dw k5 t3, dw k7 t3, dense conv t1
    ref = SupernetCell(SPACE, ops, pos).double().train()
    fused = FusedSupernetCell(copy.deepcopy(ref)).train()
    compiled = torch.compile(fused, fullgraph=True)
    config = (True, True, False, True)
    for step in range(2):  # the second step reads the running statistics the first one wrote
        x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = ref(x1, config), compiled(x2, config)
        torch.testing.assert_close(y2, y1, rtol=1e-10, atol=1e-10)
        upstream = torch.randn_like(y1)
        (y1 * upstream).sum().backward()
        (y2 * upstream).sum().backward()
        torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-10, atol=1e-10)
    for (name, p1), p2 in zip(ref.named_parameters(), fused.cell.parameters()):
        if p1.grad is not None:
            torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-10, atol=1e-10, msg=name)
    for (name, b1), b2 in zip(ref.named_buffers(), fused.cell.buffers()):
        torch.testing.assert_close(b2, b1, msg=name)
