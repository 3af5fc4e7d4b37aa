"""Search spaces and architectures (per-cell op sets), validated against a macro-architecture."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hwnas.errors import SpecError
from hwnas.ranges import SCALE
from hwnas.spaces.macro import CELL_TYPES, Macro, Slot
from hwnas.spaces.ops import OpSpec, op_from_dict


@dataclass(frozen=True)
class Space:
    """A list of candidate operations; networks name ops by their index in it."""

    name: str
    ops: tuple[OpSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"ops": [op.to_dict() for op in self.ops]}

    def op(self, index: int) -> OpSpec:
        if not 0 <= index < len(self.ops):
            raise SpecError(f"space {self.name} has ops 0..{len(self.ops) - 1}, not {index}")
        return self.ops[index]


def space_from_dict(name: str, raw: Any, where: str) -> Space:
    if not isinstance(raw, dict) or not isinstance(raw.get("ops"), list) or not raw["ops"]:
        raise SpecError(f"{where}: expected an object with a non-empty list 'ops'")
    ops = tuple(op_from_dict(op, f"{where}.ops[{i}]") for i, op in enumerate(raw["ops"]))
    seen: dict[str, int] = {}
    for i, op in enumerate(ops):
        if op.name in seen:
            raise SpecError(f"{where}.ops[{i}].name: '{op.name}' is also the name of ops[{seen[op.name]}]")
        seen[op.name] = i
    return Space(name, ops)


@dataclass(frozen=True)
class Cell:
    type: str
    ops: tuple[int, ...]


@dataclass(frozen=True)
class PlacedCell:
    """A cell in its macro-architecture slot; `ops` is empty for a skipped normal cell."""

    slot: Slot
    ops: tuple[int, ...]
    source: int | None  # index in the architecture's `cells`, None for an omitted normal cell


@dataclass(frozen=True)
class Architecture:
    name: str
    space: Space
    macro: Macro
    scale: float
    cells: tuple[Cell, ...]
    placed: tuple[PlacedCell, ...]

    def document(self) -> dict[str, Any]:
        """A self-contained file of this architecture: its space and macro defined beside it."""
        return {"spaces": {self.space.name: self.space.to_dict()}, "macro": {self.macro.name: self.macro.to_dict()},
                "networks": {self.name: self.to_dict()}}

    def to_dict(self) -> dict[str, Any]:
        """The architecture in the file schema (space and macro by name)."""
        return {"space": self.space.name, "macro": self.macro.name, "scale": self.scale,
                "cells": [{"type": c.type, "ops": list(c.ops)} for c in self.cells]}


def _parse_cell(raw: Any, where: str, space: Space) -> Cell:
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: expected an object with 'type' and 'ops', got {raw!r}")
    cell_type = raw.get("type")
    if cell_type not in CELL_TYPES:
        raise SpecError(f"{where}.type: expected N, R or E, got {cell_type!r}")
    ops = raw.get("ops")
    if not isinstance(ops, list):
        raise SpecError(f"{where}.ops: expected a list of op indices, got {ops!r}")
    for j, op in enumerate(ops):
        if isinstance(op, bool) or not isinstance(op, int):
            raise SpecError(f"{where}.ops[{j}]: expected an op index (integer), got {op!r}")
        if not 0 <= op < len(space.ops):
            raise SpecError(f"{where}.ops[{j}]: unknown op index {op}; space {space.name} "
                            f"has ops 0..{len(space.ops) - 1}")
        if op in ops[:j]:
            raise SpecError(f"{where}.ops[{j}]: op {op} ({space.ops[op].name}) appears twice in the cell")
    if not ops and cell_type != "N":
        kind = "a reduction" if cell_type == "R" else "an expansion"
        raise SpecError(f"{where}.ops: {kind} cell ({cell_type}) needs at least one op")
    return Cell(cell_type, tuple(ops))


def place_cells(cells: tuple[Cell, ...], macro: Macro, scale: float, where: str) -> tuple[PlacedCell, ...]:
    """Match cells to the macro's slots stage by stage.

    Each R/E stage starts with its R/E cell; normal cells follow, at most (cells - 1) of them.
    Normal cells may be omitted (published networks list only non-empty cells): the omitted
    slots at the end of a stage are identities.
    """
    slots = macro.slots(scale)
    placed: list[PlacedCell] = []
    i = 0
    for stage_index, stage in enumerate(macro.stages):
        stage_slots = [s for s in slots if s.stage == stage_index]
        free = list(stage_slots)
        label = f"stage {stage_index + 1} ({stage.first}, {stage_slots[0].position.cout} channels)"
        if stage.first != "N":
            got = cells[i].type if i < len(cells) else "the end of the list"
            if i >= len(cells) or cells[i].type != stage.first:
                raise SpecError(f"{where}.cells[{i}]: expected the {stage.first} cell that starts "
                                f"{label}, got {got}; wrong number of cells for macro {macro.name}")
            placed.append(PlacedCell(free.pop(0), cells[i].ops, i))
            i += 1
        while i < len(cells) and cells[i].type == "N":
            if not free:
                raise SpecError(f"{where}.cells[{i}]: {label} holds at most "
                                f"{len(stage_slots) - (stage.first != 'N')} normal cells; this one is "
                                f"too many (wrong number of cells for macro {macro.name})")
            placed.append(PlacedCell(free.pop(0), cells[i].ops, i))
            i += 1
        placed.extend(PlacedCell(slot, (), None) for slot in free)
    if i < len(cells):
        raise SpecError(f"{where}.cells[{i}]: a {cells[i].type} cell after the last stage's cells "
                        f"can't be placed; wrong number of cells for macro {macro.name}")
    return tuple(placed)


def architecture_from_dict(name: str, raw: Any, where: str, spaces: dict[str, Space],
                           macros: dict[str, Macro]) -> Architecture:
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: expected an object with space/macro/scale/cells, got {raw!r}")
    space_name, macro_name = raw.get("space"), raw.get("macro")
    if not isinstance(space_name, str) or space_name not in spaces:
        raise SpecError(f"{where}.space: unknown space {space_name!r}; known: {', '.join(sorted(spaces))}")
    if not isinstance(macro_name, str) or macro_name not in macros:
        raise SpecError(f"{where}.macro: unknown macro-architecture {macro_name!r}; "
                        f"known: {', '.join(sorted(macros))}")
    scale = SCALE.check(raw.get("scale", 1.0), f"{where}.scale:")
    cells_raw = raw.get("cells")
    if not isinstance(cells_raw, list) or not cells_raw:
        raise SpecError(f"{where}.cells: expected a non-empty list of cells")
    space, macro = spaces[space_name], macros[macro_name]
    cells = tuple(_parse_cell(c, f"{where}.cells[{i}]", space) for i, c in enumerate(cells_raw))
    placed = place_cells(cells, macro, float(scale), where)
    for pc in placed:  # grouped 1x1s must divide this position's channels
        for op in pc.ops:
            try:
                space.ops[op].check_channels(pc.slot.position.cin, pc.slot.position.cout)
            except SpecError as exc:
                raise SpecError(f"{where}.cells[{pc.source}]: {exc}") from None
    return Architecture(name, space, macro, float(scale), cells, placed)
