"""The fused multi-branch layer against the reference SupernetCell: outputs and every gradient."""

from __future__ import annotations

import copy

import pytest
import torch

from hwnas.spaces import builtin
from hwnas.spaces.macro import Position
from hwnas.supernet import SupernetCell, sample_config
from hwnas.supernet.fused import FusedSupernetCell

SPACE = builtin().spaces["latency19"]
SECOND = builtin().spaces["flops27+second45"]


def compare(space, ops, pos, config, dtype, n=2, rtol=1e-5, atol=1e-5, train=True):
    torch.manual_seed(0)
    ref = SupernetCell(space, ops, pos).to(dtype)
    fused = FusedSupernetCell(copy.deepcopy(ref)).to(dtype)
    ref.train(train)
    fused.train(train)
    x = torch.randn(n, pos.cin, pos.resolution, pos.resolution, dtype=dtype)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = ref(x1, config), fused(x2, config)
    torch.testing.assert_close(y2, y1, rtol=rtol, atol=atol)
    upstream = torch.randn_like(y1)
    (y1 * upstream).sum().backward()
    (y2 * upstream).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=rtol, atol=atol)
    for (name, p1), p2 in zip(ref.named_parameters(), fused.cell.parameters()):
        if p1.grad is None:
            assert p2.grad is None, name
        else:
            torch.testing.assert_close(p2.grad, p1.grad, rtol=rtol, atol=atol, msg=name)
    for (name, b1), b2 in zip(ref.named_buffers(), fused.cell.buffers()):
        torch.testing.assert_close(b2, b1, msg=name)  # BN running statistics updated alike


@pytest.mark.parametrize("seed", range(5))
def test_random_configs_double(seed):
    gen = torch.Generator().manual_seed(seed)
    ops = [0, 1, 4, 8, 9, 13, 15]  # depthwise and dense/ssc branches together
    pos = Position("N" if seed % 2 else "R", 8, 8 if seed % 2 else 16, 9, 1 if seed % 2 else 2)
    config = sample_config(len(ops), pos.cell_type != "N", gen)
    compare(SPACE, ops, pos, config, torch.float64, rtol=1e-10, atol=1e-10)


def test_real_shape_float32_six_depthwise_branches():
    ops = [0, 1, 3, 4, 6, 7]  # dw k3/5/7 x t1/3
    compare(SPACE, ops, Position("N", 64, 64, 28, 1), torch.ones(6, dtype=torch.bool), torch.float32, n=4,
            rtol=1e-4, atol=1e-4)


def test_eval_mode_and_grouped_ops():
    ops = [0, 27, 31, 35]  # dw with groups (1,2), (2,1), (2,2) run unfused beside a fused one
    compare(SECOND, ops, Position("N", 16, 16, 10, 1), torch.tensor([True, True, False, True]), torch.float64,
            rtol=1e-10, atol=1e-10, train=False)


def test_gradcheck_of_the_fused_cell():
    torch.manual_seed(0)
    cell = SupernetCell(SPACE, [0, 4], Position("N", 2, 2, 5, 1)).double().eval()
    fused = FusedSupernetCell(cell, inplace=False)  # gradcheck backpropagates through one graph many times
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    config = torch.tensor([True, True])
    assert torch.autograd.gradcheck(lambda t: fused(t, config), (x,))


def test_inplace_allows_one_backward_and_inplace_false_many():
    """The default in-place backward writes dL/dh over the expand output: a second backward
    through the same graph must fail loudly, and inplace=False must support it exactly."""
    torch.manual_seed(0)
    pos = Position("N", 4, 4, 6, 1)
    config = torch.ones(3, dtype=torch.bool)
    cell = SupernetCell(SPACE, [0, 4, 7], pos).double()
    ref_cell = copy.deepcopy(cell)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    y = FusedSupernetCell(cell)(x, config).sum()
    y.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()
    ref_x = x.detach().clone().requires_grad_()
    ref_y = ref_cell(ref_x, config).sum()
    ref_y.backward(retain_graph=True)
    ref_y.backward()
    x.grad = None
    cell.zero_grad()
    twice = FusedSupernetCell(cell, inplace=False)(x, config).sum()
    twice.backward(retain_graph=True)
    twice.backward()
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-10, atol=1e-10)
    for (name, p1), p2 in zip(ref_cell.named_parameters(), cell.parameters()):
        torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-10, atol=1e-10, msg=name)


def test_channels_last_input():
    """A channels-last x (its convs' outputs are channels-last too) gives the reference's result."""
    torch.manual_seed(0)
    pos = Position("N", 4, 4, 6, 1)
    config = torch.ones(3, dtype=torch.bool)
    cell = SupernetCell(SPACE, [0, 4, 7], pos).double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    want = copy.deepcopy(cell)(x, config)
    got = FusedSupernetCell(cell)(x.to(memory_format=torch.channels_last), config)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
