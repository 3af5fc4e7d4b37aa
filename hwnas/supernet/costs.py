"""Pricing supernet configurations from a table: per layer, any branch combination.

C(g) of a layer = sum of its active branches' entries + the merge (latency tables only):
(terms - 1) * merge_add + merge_scale when terms > 1, terms = active + 1 for a normal cell.
Units: milliseconds per batch (the table's statistic) for latency, millions of MACs per
image for MACs. The stem and head are a fixed cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hwnas.errors import HwnasError
from hwnas.profiling.table import HEAD_KEY, STEM_KEY, Table, merge_add_key, merge_scale_key, op_key
from hwnas.spaces.macro import Position

METRICS = ("latency", "macs")


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
        terms = active + int(self.identity)
        return (terms - 1) * self.merge_add + self.merge_scale if active and terms > 1 else 0.0

    def cost(self, config: torch.Tensor) -> torch.Tensor:
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
    metric: str
    layers: tuple[LayerCosts, ...]
    fixed: float  # stem + head

    @property
    def unit(self) -> str:
        return "ms" if self.metric == "latency" else "M MACs"

    def cost(self, configs: Sequence[torch.Tensor]) -> float:
        return self.fixed + float(sum(layer.cost(c) for layer, c in zip(self.layers, configs)))

    def expected(self, probabilities: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.fixed + sum((layer.expected(p) for layer, p in zip(self.layers, probabilities)),
                                torch.zeros((), dtype=torch.float64))


def cost_model(table: Table, layers: Sequence[tuple[Position, Sequence[int]]], metric: str) -> CostModel:
    """The cost model of a supernet whose layer i sits at layers[i][0] with candidate ops layers[i][1]."""
    if metric not in METRICS:
        raise HwnasError(f"unknown metric '{metric}'; choose latency or macs")
    if metric == "latency" and not table.has_latency:
        raise HwnasError("the table holds no latency (backend 'none'): use --metric macs or a profiled table")
    space = table.space()

    def price(key: str) -> float:
        return table.latency(key) if metric == "latency" else table.entry(key)["macs"] / 1e6

    out = []
    for pos, ops in layers:
        branches = torch.tensor([price(op_key(space.ops[i], pos)) for i in ops], dtype=torch.float64)
        add = price(merge_add_key(pos)) if metric == "latency" else 0.0
        scale = price(merge_scale_key(pos)) if metric == "latency" else 0.0
        out.append(LayerCosts(branches, add, scale, pos.cell_type == "N"))
    return CostModel(metric, tuple(out), price(STEM_KEY) + price(HEAD_KEY))
