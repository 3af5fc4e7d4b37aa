"""NSE's evolution of the search-space subset (Ci et al., ICCV 2021, Sec. 3.3): per layer, the
union of the Pareto architectures' ops, refilled to K from the ops the layer has not traversed.

Each layer draws new ops in one order fixed at the start of the experiment (a shuffle of the
whole space per layer); the subset of a round is the ops inherited from the previous front
(locked against simplification: lock and rehearse) plus fresh ones.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LayerPool:
    order: list[int]  # the layer's shuffle of the whole space
    traversed: list[int] = field(default_factory=list)  # every op that has been in the layer's subset

    def fresh(self) -> list[int]:
        seen = set(self.traversed)
        return [op for op in self.order if op not in seen]

    def to_dict(self) -> dict[str, Any]:
        return {"order": self.order, "traversed": self.traversed}


@dataclass
class Evolution:
    k: int
    pools: list[LayerPool]
    subsets: list[list[int]]  # the current subset of each layer
    locked: list[list[int]]  # the inherited ops of each layer (never simplified away)

    @classmethod
    def start(cls, layers: int, ops: int, k: int, seed: int) -> Evolution:
        """K ops per layer, the first K of each layer's shuffle (all when the space has fewer: one
        round searches it whole, and the pools cannot refill after it)."""
        rng = random.Random(seed)
        pools = [LayerPool(rng.sample(range(ops), ops)) for _ in range(layers)]
        evo = cls(min(k, ops), pools, [[] for _ in range(layers)], [[] for _ in range(layers)])
        ok = evo.replenish([[] for _ in range(layers)])
        assert ok
        return evo

    def replenish(self, inherited: Sequence[Sequence[int]]) -> bool:
        """Next subsets: each layer's inherited ops plus fresh ones up to K. False (and no change)
        when some layer's pool cannot fill its subset to K: NSE's end of the search."""
        new = []
        for pool, keep in zip(self.pools, inherited):
            keep = list(dict.fromkeys(keep))
            fill = pool.fresh()[:max(0, self.k - len(keep))]
            if len(keep) + len(fill) < self.k:
                return False
            new.append(keep + fill)
        for pool, subset in zip(self.pools, new):
            pool.traversed.extend(op for op in subset if op not in pool.traversed)
        self.subsets = [list(s) for s in new]
        self.locked = [list(dict.fromkeys(k)) for k in inherited]
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "subsets": self.subsets, "locked": self.locked,
                "pools": [p.to_dict() for p in self.pools]}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Evolution:
        return cls(raw["k"], [LayerPool(list(p["order"]), list(p["traversed"])) for p in raw["pools"]],
                   [list(s) for s in raw["subsets"]], [list(s) for s in raw["locked"]])


def aggregate(architectures: Sequence[Sequence[Sequence[int]]], layers: int) -> list[list[int]]:
    """Per layer, the union of the ops the architectures use there (each architecture: per layer
    its op indices), in order of first use."""
    out: list[list[int]] = [[] for _ in range(layers)]
    for arch in architectures:
        for layer, ops in enumerate(arch):
            out[layer].extend(op for op in ops if op not in out[layer])
    return out
