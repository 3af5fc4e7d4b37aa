"""The supernet's multi-branch cell (eager reference) and its configurations.

A configuration is a bool tensor with one entry per branch (True = active). It is always
passed explicitly: the cell holds no sampling state. The identity of a normal cell is always
on and is not part of the configuration.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hwnas.model.blocks import Operation, cell_mean
from hwnas.spaces.arch import Space
from hwnas.spaces.macro import Position


def sample_config(n: int, needs_branch: bool, generator: torch.Generator | None = None,
                  p: torch.Tensor | float = 0.5) -> torch.Tensor:
    """Each branch ~ Bernoulli(p); redrawn while empty when the cell needs a branch (R/E)."""
    probs = p if isinstance(p, torch.Tensor) else torch.full((n,), float(p))
    while True:
        config = torch.rand(n, generator=generator) < probs.detach().cpu()
        if config.any() or not needs_branch:
            return config


class SupernetCell(nn.Module):
    """The branches of one layer's search-space subset; computes any configuration of them:
    the `cell_mean` of its active branches (a normal cell's identity always on)."""

    def __init__(self, space: Space, ops: Sequence[int], position: Position):
        super().__init__()
        if not ops:
            raise ValueError("a supernet cell needs at least one candidate op")
        self.ops = tuple(ops)
        self.position = position
        self.identity = position.cell_type == "N"
        self.branches = nn.ModuleList(Operation(space.ops[i], position) for i in self.ops)

    @property
    def needs_branch(self) -> bool:
        return not self.identity

    def active(self, config: torch.Tensor | Sequence[bool]) -> list[int]:
        """The indices of a configuration's active branches, after checking it.

        config: a bool tensor, or a sequence of bools; under torch.compile(fullgraph=True) pass
        a tuple of bools (a tensor's values are data a graph cannot branch on; each distinct
        tuple compiles once)."""
        n = len(self.branches)
        if isinstance(config, torch.Tensor):
            if config.dtype != torch.bool or config.shape != (n,):
                raise ValueError(f"config must be a bool tensor of shape ({n},), got {config.dtype} "
                                 f"{tuple(config.shape)}")
            flags = config.tolist()
        else:
            flags = list(config)
            if len(flags) != n or not all(isinstance(f, bool) for f in flags):
                raise ValueError(f"config must be {n} bools (or a bool tensor), got {config!r}")
        active = [i for i, on in enumerate(flags) if on]
        if self.needs_branch and not active:
            raise ValueError(f"a {self.position.cell_type} cell needs at least one active branch")
        return active

    def forward(self, x: torch.Tensor, config: torch.Tensor | Sequence[bool]) -> torch.Tensor:
        return cell_mean(x, [self.branches[i](x) for i in self.active(config)], self.identity)
