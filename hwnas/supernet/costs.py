"""Pricing supernet configurations from a table: per layer, any branch combination.

C(g) of a layer = sum of its active branches' entries + the merge (latency tables only), by
the table's combination model (hwnas.profiling.combination). Units, the same as `predict`'s:
calibrated milliseconds per batch (the table's statistic, times its calibration factor) for
latency, millions of MACs per image for MACs. The stem and head, when asked for, are a fixed cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hwnas.errors import HwnasError
from hwnas.profiling.combination import merge_cost
from hwnas.profiling.table import HEAD_KEY, STEM_KEY, Table, merge_add_key, merge_scale_key, op_key
from hwnas.spaces.macro import Position

METRICS = ("latency", "macs")
UNITS = {"latency": "ms per batch, calibrated", "macs": "M MACs per image"}


@dataclass(frozen=True)
class LayerCosts:
    branches: torch.Tensor  # (K,) cost of each candidate branch alone
    merge_add: float
    merge_scale: float
    identity: bool  # a normal cell: the identity is one more term of the mean

    @property
    def needs_branch(self) -> bool:
        return not self.identity

    def merge(self, active: int) -> float:
        return merge_cost(active, self.identity, self.merge_add, self.merge_scale)

    def cost(self, config: torch.Tensor | Sequence[bool]) -> torch.Tensor:
        """C(g) of one configuration: a bool tensor or a sequence of bools, one per branch."""
        if not isinstance(config, torch.Tensor) and all(isinstance(g, bool) for g in config):
            config = torch.tensor(list(config), dtype=torch.bool)
        if not isinstance(config, torch.Tensor) or config.dtype != torch.bool or config.shape != self.branches.shape:
            raise TypeError(f"a configuration is {len(self.branches)} bools (or a bool tensor), one per branch, "
                            f"got {_kind(config)}")
        return self.branches[config].sum() + self.merge(int(config.sum()))

    def expected(self, p: torch.Tensor) -> torch.Tensor:
        """Exact E[C] under independent Bernoulli(p) branches (conditioned on >= 1 for R/E cells),
        differentiable in p: the merge needs the distribution of the number of active branches,
        a Poisson-binomial computed by dynamic programming."""
        count = torch.zeros(len(p) + 1, dtype=p.dtype)
        count[0] = 1.0
        for pn in p:  # count[k] = P(k active among the branches so far)
            count = torch.cat([count[:1] * (1 - pn), count[1:] * (1 - pn) + count[:-1] * pn])
        merge = torch.tensor([self.merge(k) for k in range(len(p) + 1)], dtype=p.dtype)
        expected = (p * self.branches.to(p.dtype)).sum() + (count * merge).sum()
        if self.needs_branch:  # C(empty) = 0, so E[C | k >= 1] = E[C] / P(k >= 1)
            expected = expected / (1 - count[0])
        return expected


@dataclass(frozen=True)
class CostModel:
    """The cost of every configuration of a sequence of layers, plus a fixed cost (stem and head)."""

    metric: str
    layers: tuple[LayerCosts, ...]
    fixed: float  # stem + head when the model prices a whole network, else 0

    @property
    def unit(self) -> str:
        return UNITS[self.metric]

    def cost(self, configs: Sequence[torch.Tensor]) -> float:
        return self.fixed + float(sum(layer.cost(c) for layer, c in zip(self.layers, configs)))

    def expected(self, probabilities: Sequence[torch.Tensor]) -> torch.Tensor:
        """Exact E[C] under independent Bernoulli branches, differentiable in the probabilities."""
        return self.fixed + sum((layer.expected(p) for layer, p in zip(self.layers, probabilities)),
                                torch.zeros((), dtype=torch.float64))


def cost_model(table: Table, layers: Sequence[tuple[Position, Sequence[int]]], metric: str, *,
               stem_and_head: bool) -> CostModel:
    """The cost model of layers where layer i sits at layers[i][0] with candidate ops layers[i][1]
    (op indices of the table's space).

    stem_and_head: add the table's stem and head as a fixed cost: True when the layers are the
    cells of a whole network of the table's macro-architecture (a supernet), False for layers
    of one's own network. Latency is calibrated, as `predict` reports it (`CostModel.unit`).
    """
    if metric not in METRICS:
        raise HwnasError(f"unknown metric '{metric}'; choose latency or macs")
    if metric == "latency" and not table.has_latency:
        raise HwnasError("the table holds no latency (backend 'none'): use --metric macs or a profiled table")
    space = table.space()
    factor = table.calibration_factor

    def price(key: str) -> float:
        return table.latency(key) * factor if metric == "latency" else table.entry(key)["macs"] / 1e6

    out = []
    for pos, ops in layers:
        if not isinstance(pos, Position):
            raise TypeError(f"each layer is (Position, op indices), got {_kind(pos)} as the position")
        branches = torch.tensor([price(op_key(space.op(i), pos)) for i in ops], dtype=torch.float64)
        add = price(merge_add_key(pos)) if metric == "latency" else 0.0
        scale = price(merge_scale_key(pos)) if metric == "latency" else 0.0
        out.append(LayerCosts(branches, add, scale, pos.cell_type == "N"))
    fixed = price(STEM_KEY) + price(HEAD_KEY) if stem_and_head else 0.0
    return CostModel(metric, tuple(out), fixed)


def _kind(value: object) -> str:
    return f"{type(value).__name__} {value!r}"[:80]
