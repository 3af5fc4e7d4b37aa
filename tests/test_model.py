"""The reference modules: named layers, the cell's mean, and checkpoints of the positional layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from hwnas.model import MultiBranchCell, Operation, build_network, cell_mean
from hwnas.model.checkpoints import upgrade_state_dict
from hwnas.spaces import builtin
from hwnas.spaces.catalog import resolve_architecture
from hwnas.spaces.macro import Position
from hwnas.spaces.ops import ConvLayer, OpSpec

TINY = str(Path(__file__).resolve().parent / "data" / "tiny.json")


def positional(layers: list[ConvLayer]) -> nn.Sequential:
    """The earlier layout of an operation: a Sequential of (conv, BN[, ReLU]) Sequentials."""
    blocks = []
    for layer in layers:
        mods: list[nn.Module] = [nn.Conv2d(layer.cin, layer.cout, layer.kernel, layer.stride, layer.padding,
                                           dilation=layer.dilation, groups=layer.groups, bias=layer.bias),
                                 nn.BatchNorm2d(layer.cout)]
        if layer.relu:
            mods.append(nn.ReLU())
        blocks.append(nn.Sequential(*mods))
    return nn.Sequential(*blocks)


KINDS = {"dw": ("expand", "bn1", "depthwise", "bn2", "project", "bn3"),
         "conv": ("expand", "bn1", "conv", "bn2", "project", "bn3"),
         "dual": ("expand", "bn1", "conv1", "bn_mid", "conv2", "bn2", "project", "bn3"),
         "ssc": ("expand", "bn1", "conv_1xk", "bn_mid", "conv_kx1", "bn2", "project", "bn3")}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_operation_layers_are_named_and_load_positional_checkpoints(kind):
    op = OpSpec(kind, kind, 5 if kind in ("dw", "ssc") else 3, 2, groups=(1, 1))
    pos = Position("R", 4, 8, 9, 2)
    old = positional(op.layers(pos.cin, pos.cout, pos.stride))
    torch.manual_seed(0)
    for m in old.modules():  # non-trivial BN statistics, so that a swapped BN shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    new = Operation(op, pos)
    assert tuple(name for name, _ in new.named_children()) == KINDS[kind]
    new.load_state_dict(upgrade_state_dict(new, old.state_dict()))
    x = torch.randn(2, 4, 9, 9)
    torch.testing.assert_close(new.eval()(x), old.eval()(x))


def test_network_loads_a_positional_checkpoint_of_itself():
    net = build_network(resolve_architecture(TINY), seed=0)  # dw and ssc branches
    old = {}
    for key, value in net.state_dict().items():
        parts = key.split(".")
        if parts[0] == "stem":
            parts[1] = {"conv": "0", "bn": "1"}[parts[1]]
        elif parts[0] == "head" and parts[1] == "conv":
            parts.insert(2, "0")
        elif parts[0] == "cells":  # cells.i.branches.j.<layer>.<param> -> cells.i.branches.j.<step>.<0|1>.<param>
            kind = net.cells[int(parts[1])].branches[int(parts[3])].op.kind
            index = KINDS[kind].index(parts[4])
            parts[4:5] = [str(index // 2), str(index % 2)]
        old[".".join(parts)] = value
    assert "stem.0.weight" in old and "cells.1.branches.1.1.0.weight" in old  # ssc's conv_1xk
    fresh = build_network(resolve_architecture(TINY), seed=1)
    fresh.load_state_dict(upgrade_state_dict(fresh, old))
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(fresh.eval()(x), net.eval()(x))


@pytest.mark.parametrize("identity", [True, False])
@pytest.mark.parametrize("n", [0, 1, 3])
def test_cell_mean(n, identity):
    x = torch.randn(2, 3)
    outs = [torch.randn(2, 3) for _ in range(n)]
    if not outs and not identity:
        with pytest.raises(ValueError):
            cell_mean(x, outs, identity)
        return
    terms = ([x] if identity else []) + outs
    torch.testing.assert_close(cell_mean(x, outs, identity), torch.stack(terms).mean(0))


def test_multi_branch_cell_is_the_mean_of_its_branches():
    space = builtin().spaces["latency19"]
    pos = Position("N", 4, 4, 6, 1)
    branches = [Operation(space.ops[i], pos).eval() for i in (0, 9, 12)]
    x = torch.randn(2, 4, 6, 6)
    want = (x + sum(b(x) for b in branches)) / 4
    torch.testing.assert_close(MultiBranchCell(branches, identity=True).eval()(x), want)
