"""Random architectures of a space: every branch Bernoulli(p), R/E cells never empty."""

from __future__ import annotations

import random

from hwnas.spaces.arch import Architecture, Cell, PlacedCell, Space
from hwnas.spaces.macro import Macro


def sample_cell_ops(n_ops: int, cell_type: str, rng: random.Random, p: float = 0.5) -> tuple[int, ...]:
    """Each op independently with probability p; an R/E cell is redrawn until non-empty
    (the Bernoulli distribution conditioned on at least one branch)."""
    while True:
        ops = tuple(i for i in range(n_ops) if rng.random() < p)
        if ops or cell_type == "N":
            return ops


def sample_architecture(space: Space, macro: Macro, scale: float, rng: random.Random, p: float = 0.5,
                        name: str = "sample") -> Architecture:
    slots = macro.slots(scale)
    cells = tuple(Cell(s.position.cell_type, sample_cell_ops(len(space.ops), s.position.cell_type, rng, p))
                  for s in slots)
    placed = tuple(PlacedCell(s, c.ops, i) for i, (s, c) in enumerate(zip(slots, cells)))
    return Architecture(name, space, macro, scale, cells, placed)
