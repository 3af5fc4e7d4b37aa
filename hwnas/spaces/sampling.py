"""Random architectures of a space: every branch Bernoulli(p), R/E cells never empty."""

from __future__ import annotations

import random
from collections.abc import Sequence

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
    """A random architecture: every op of every cell with probability p (R/E cells non-empty)."""
    slots = macro.slots(scale)
    ops = [sample_cell_ops(len(space.ops), s.position.cell_type, rng, p) for s in slots]
    return slot_architecture(space, macro, scale, ops, name)


def slot_architecture(space: Space, macro: Macro, scale: float, ops: Sequence[Sequence[int]],
                      name: str) -> Architecture:
    """The architecture whose cell in slot i of the macro-architecture has the ops `ops[i]`."""
    slots = macro.slots(scale)
    if len(ops) != len(slots):
        raise ValueError(f"{len(ops)} op lists for {len(slots)} cell slots")
    cells = tuple(Cell(s.position.cell_type, tuple(o)) for s, o in zip(slots, ops))
    placed = tuple(PlacedCell(s, c.ops, i) for i, (s, c) in enumerate(zip(slots, cells)))
    return Architecture(name, space, macro, scale, cells, placed)
