"""The resource constraint of the Pareto retrieval, and the candidates drawn against it.

Two modes:
- `budget`: cost <= target. What most latency users mean. Under an upper limit alone nothing
  is mistaken for Pareto-optimal near the limit (only a cheaper point can dominate a point
  within it, and cheaper points are sampled anyway), so no edge samples are drawn.
- `interval`: target <= cost <= target * (1 + margin), NSE's (Ci et al., ICCV 2021, Sec. 3.3 and
  appendix: tau = 300 MFLOPs, final models of 320-330 MFLOPs). Points inside the interval just
  above its lower end would look Pareto-optimal only because nothing cheaper was sampled (the
  "edging effect"), so edge samples are drawn just below it, cost in
  [target * (1 - edge_margin), target), and used only to correct the front: they can dominate
  an accepted point, never join the front, never pass their ops to the next round, never become
  a result.

Whatever the mode, only architectures that satisfy the constraint are on the front, so only they
are aggregated, inherited (re-evaluated next round), locked against simplification and written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from hwnas.search.retrieval import Candidate, Sampler, configs_of, front_of

MODES = ("budget", "interval")
DRAWS_PER_SAMPLE = 20  # draws allowed per wanted distinct architecture (P(theta) may hold few)


@dataclass(frozen=True)
class Constraint:
    mode: str  # budget or interval
    target: float  # in the metric's units: the budget, or the interval's lower end
    margin: float = 0.1  # interval: its upper end is target * (1 + margin)
    edge_margin: float = 0.1  # interval: edge samples cost [target * (1 - edge_margin), target)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"constraint must be one of {', '.join(MODES)}, got {self.mode!r}")

    @classmethod
    def of(cls, cfg: Any) -> Constraint:
        """The constraint of a SearchConfig."""
        return cls(cfg.constraint, cfg.target, cfg.margin, cfg.edge_margin)

    @property
    def upper(self) -> float:
        return self.target if self.mode == "budget" else self.target * (1 + self.margin)

    @property
    def has_edge(self) -> bool:
        return self.mode == "interval"

    def satisfied(self, cost: float) -> bool:
        if self.mode == "budget":
            return cost <= self.target
        return self.target <= cost <= self.upper

    def edge(self, cost: float) -> bool:
        """Just outside the constraint on its cheap side: where a dominating point of an interval's
        lower end would be. Never true for a budget."""
        return self.has_edge and self.target * (1 - self.edge_margin) <= cost < self.target

    def describe(self, unit: str = "") -> str:
        u = f" {unit}" if unit else ""
        if self.mode == "budget":
            return f"cost <= {self.target:g}{u}"
        return (f"cost in [{self.target:g}, {self.upper:.6g}]{u}, edge samples in "
                f"[{self.target * (1 - self.edge_margin):.6g}, {self.target:g})")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode, "target": self.target, "upper": self.upper}
        if self.has_edge:
            out.update(lower=self.target, edge=[self.target * (1 - self.edge_margin), self.target])
        return out


@dataclass
class Drawn:
    """A round's candidates before evaluation and how they were drawn."""

    candidates: list[Candidate] = field(default_factory=list)
    drawn: int = 0  # distinct architectures drawn for D (NSE's D counts these, not the accepted)
    draws: int = 0  # draws in all, repeats and the edge top-up included

    def count(self, kind: str) -> int:
        return sum(c.kind == kind for c in self.candidates)

    def summary(self) -> dict[str, int]:
        return {"drawn": self.drawn, "draws": self.draws, "accepted": self.count("sample"),
                "edge": self.count("edge"), "previous": self.count("previous")}


def draw(sampler: Sampler, constraint: Constraint, samples: int, edge_samples: int,
         generator: torch.Generator) -> Drawn:
    """NSE's retrieval candidates: `samples` (D) distinct architectures drawn from P(theta) (or as
    many as DRAWS_PER_SAMPLE * D draws find), of which those satisfying the constraint are kept
    ("sample"); up to `edge_samples` (D_e) edge architectures ("edge"), first those among the D,
    then drawn further (at most DRAWS_PER_SAMPLE * D_e more draws) until D_e are found."""
    out = Drawn()
    before = len(sampler.seen)
    sampler.draws = 0
    pool = sampler.sample(samples, lambda cost: True, "sample", generator, DRAWS_PER_SAMPLE * samples)
    out.drawn = len(sampler.seen) - before
    edges: list[Candidate] = []
    for cand in pool:
        if constraint.satisfied(cand.cost):
            out.candidates.append(cand)
        elif len(edges) < edge_samples and constraint.edge(cand.cost):
            cand.kind = "edge"
            edges.append(cand)
    if constraint.has_edge and len(edges) < edge_samples:
        edges += sampler.sample(edge_samples - len(edges), constraint.edge, "edge", generator,
                                DRAWS_PER_SAMPLE * edge_samples)
    out.candidates += edges
    out.draws = sampler.draws
    return out


def previous_front(drawn: Drawn, sampler: Sampler, previous: Sequence[Candidate], constraint: Constraint,
                   layer_ops: Sequence[Sequence[int]]) -> None:
    """Lock and rehearse: the previous round's front, re-evaluated on this supernet (those of its
    architectures still selectable, satisfying the constraint, not drawn already)."""
    for old in previous:
        configs = configs_of(old.ops, layer_ops)
        if configs is None:
            continue
        cand = Candidate(old.ops, sampler.price(configs), "previous")
        if constraint.satisfied(cand.cost) and cand.key not in sampler.seen:
            sampler.seen.add(cand.key)
            drawn.candidates.append(cand)


def constrained_front(candidates: Sequence[Candidate], constraint: Constraint) -> list[Candidate]:
    """The Pareto front of (cost, accuracy) over every evaluated candidate, edge samples included,
    restricted to those satisfying the constraint: an accepted architecture is on it when no
    candidate dominates it, and an edge sample can dominate but never be on it."""
    return [c for c in front_of(candidates) if constraint.satisfied(c.cost)]
