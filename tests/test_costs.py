"""Analytic MACs/params against torch's FlopCounterMode and the built modules: exactly equal."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hwnas.costs import network_cost, op_cost
from hwnas.model import Operation, build_network
from hwnas.spaces import builtin

SPACE_MACRO = [("latency19", "latency", 1.0), ("flops27", "flops", 1.04), ("flops27+second45", "flops", 1.045)]


def torch_count(module: torch.nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    """(MACs, params) as torch sees them, on the meta device (shapes only, no arithmetic)."""
    module = module.to("meta").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(torch.empty(shape, device="meta"))
    flops = counter.get_total_flops()
    assert flops % 2 == 0
    return flops // 2, sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("space_name,macro_name,scale", SPACE_MACRO)
def test_every_op_at_every_position(space_name, macro_name, scale):
    space, macro = builtin().spaces[space_name], builtin().macros[macro_name]
    checked = 0
    for pos in macro.positions(scale):
        for op in space.ops:
            with torch.device("meta"):
                module = Operation(op, pos)
            macs, params = torch_count(module, (1, pos.cin, pos.resolution, pos.resolution))
            assert op_cost(op, pos).macs == macs, (op.name, pos.key)
            assert op_cost(op, pos).params == params, (op.name, pos.key)
            checked += 1
    assert checked == len(space.ops) * len(macro.positions(scale))


@pytest.mark.parametrize("name", ["nsenet_gpu", "nsenet27", "nsenet"])
def test_whole_network(name):
    arch = builtin().networks[name]
    with torch.device("meta"):
        net = build_network(arch)
    macs, params = torch_count(net, (1, 3, 224, 224))
    cost = network_cost(arch)
    assert cost.total.macs == macs
    assert cost.total.params == params
    # stem, cells and head partition the total
    assert cost.stem.macs + sum(c.macs for c in cost.cells) + cost.head.macs == macs


def test_macs_scale_with_batch():
    arch = builtin().networks["nsenet27"]
    with torch.device("meta"):
        net = build_network(arch)
    macs4, _ = torch_count(net, (4, 3, 224, 224))
    assert macs4 == 4 * network_cost(arch).total.macs
