"""A whole network (stem, multi-branch cells, head) built from an Architecture."""

from __future__ import annotations

import torch
from torch import nn

from hwnas.model.blocks import MultiBranchCell, Operation
from hwnas.model.stem_head import Head, Stem
from hwnas.spaces.arch import Architecture, PlacedCell


def build_cell(arch: Architecture, placed: PlacedCell) -> MultiBranchCell:
    pos = placed.slot.position
    branches = [Operation(arch.space.ops[i], pos) for i in placed.ops]
    return MultiBranchCell(branches, identity=pos.cell_type == "N")


class Network(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        self.stem = Stem(arch.macro)
        # Empty normal cells are identities; they are left out of the module tree.
        self.cells = nn.Sequential(*(build_cell(arch, pc) for pc in arch.placed if pc.ops))
        self.head = Head(arch.macro, arch.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.cells(self.stem(x)))


def build_network(arch: Architecture, seed: int | None = None) -> Network:
    """The network with deterministic initial weights when a seed is given."""
    if seed is None:
        return Network(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Network(arch)
