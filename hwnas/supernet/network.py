"""A supernet: stem, one SupernetCell per slot of the macro-architecture, head; and its two
kinds of training step (weights on sampled subnets, theta through the simulated gradient)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from hwnas.model.stem_head import Head, Stem
from hwnas.spaces.arch import Space
from hwnas.spaces.macro import Macro
from hwnas.supernet.cell import SupernetCell, sample_config
from hwnas.supernet.fitness import FitnessIndicators, PairSample, simulated_output
from hwnas.supernet.fused import FusedSupernetCell
from hwnas.supernet.regularizer import ResourceRegularizer


class Supernet(nn.Module):
    """Stem, one SupernetCell per cell slot of the macro-architecture (candidate ops
    `layer_ops[i]` in slot i), head; `fused=True` computes the cells with the fused layer."""

    def __init__(self, space: Space, macro: Macro, scale: float, layer_ops: Sequence[Sequence[int]],
                 fused: bool = False):
        super().__init__()
        slots = macro.slots(scale)
        if len(layer_ops) != len(slots):
            raise ValueError(f"{len(layer_ops)} op lists for {len(slots)} cell slots")
        self.stem = Stem(macro)
        self.cells = nn.ModuleList(SupernetCell(space, ops, s.position) for s, ops in zip(slots, layer_ops))
        self.head = Head(macro, scale)
        self.fused = fused

    def _cell(self, i: int, x: torch.Tensor, config: torch.Tensor) -> torch.Tensor:
        cell = self.cells[i]
        return FusedSupernetCell(cell)(x, config) if self.fused else cell(x, config)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor, configs: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.stem(x)
        for i, config in enumerate(configs):
            x = self._cell(i, x, config)
        return self.head(x)

    def forward_pairs(self, x: torch.Tensor, pairs: Sequence[PairSample]) -> torch.Tensor:
        """Forward g_a of every layer; theta gets NSE's simulated gradient through g_b."""
        x = self.stem(x)
        for i, pair in enumerate(pairs):
            o_a = self._cell(i, x, pair.config_a)
            with torch.no_grad():
                o_b = self._cell(i, x, pair.config_b)
            x = simulated_output(o_a, o_b, pair)
        return self.head(x)

    def sample_configs(self, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Every branch ~ Bernoulli(0.5), R/E cells non-empty: the weight-training subnets."""
        cells: Any = self.cells
        return [sample_config(len(c.branches), c.needs_branch, generator) for c in cells]


def weight_step(net: Supernet, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator | None = None, model: nn.Module | None = None) -> float:
    """One weight update on a random subnet (every branch Bernoulli(0.5)); the cross-entropy.
    model: what computes `net` (DDP around it in a data-parallel run)."""
    net.train()
    loss = F.cross_entropy((model or net)(x, net.sample_configs(generator)), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def theta_step(net: Supernet, fitness: FitnessIndicators, regularizer: ResourceRegularizer,
               optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               generator: torch.Generator | None = None,
               average: Callable[[Iterable[nn.Parameter]], None] | None = None) -> tuple[float, float]:
    """One update of theta (only theta is in `optimizer`) on validation data: CE + penalty.
    Only theta's gradients are computed (the weights' would be discarded); `average` makes them
    the mean over the ranks of a data-parallel run."""
    pairs = fitness.sample_pairs(generator)
    ce = F.cross_entropy(net.forward_pairs(x, pairs), y)
    penalty = regularizer(pairs, fitness)
    optimizer.zero_grad()
    (ce + penalty).backward(inputs=list(fitness.parameters()))
    if average is not None:
        average(fitness.parameters())
    optimizer.step()
    return float(ce.detach()), float(penalty.detach())
