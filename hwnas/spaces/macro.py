"""Macro-architectures: stem, stages of cells, head; and the layer positions they define.

The stem and head convolutions are defined here, beside the stages: the PyTorch modules
(hwnas.model.stem_head) and the MACs/params counter both read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hwnas.errors import SpecError
from hwnas.spaces.ops import ConvLayer

CELL_TYPES = ("N", "R", "E")


def make_divisible(value: float, divisor: int = 8) -> int:
    """Nearest multiple of divisor, never below it nor more than 10% below value."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class Position:
    """Where a cell sits: what a latency table needs one entry per operation for."""

    cell_type: str
    cin: int
    cout: int
    resolution: int  # input height = width
    stride: int

    @property
    def key(self) -> str:
        return f"{self.cell_type}-{self.cin}-{self.cout}-{self.resolution}-s{self.stride}"

    @property
    def out_resolution(self) -> int:
        # 'same' padding: ceil(resolution / stride), as every op of every kind computes.
        return (self.resolution - 1) // self.stride + 1


@dataclass(frozen=True)
class Stage:
    channels: int
    cells: int
    first: str


@dataclass(frozen=True)
class Slot:
    """One cell slot of a macro-architecture at a given scale."""

    index: int  # 0-based over all slots
    stage: int  # 0-based
    position: Position


@dataclass(frozen=True)
class Macro:
    name: str
    input: int
    stem_channels: int
    stem_stride: int
    stages: tuple[Stage, ...]
    head_channels: int
    classes: int

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "stem": {"channels": self.stem_channels, "stride": self.stem_stride},
                "stages": [{"channels": s.channels, "cells": s.cells, "first": s.first} for s in self.stages],
                "head": {"conv1x1": self.head_channels, "classes": self.classes}}

    def stage_channels(self, scale: float) -> list[int]:
        """Channels of each stage: the first is kept, the others scaled and made divisible by 8."""
        return [s.channels if i == 0 else make_divisible(s.channels * scale)
                for i, s in enumerate(self.stages)]

    def stem_layer(self) -> ConvLayer:
        """3x3 conv, stride 2 in every built-in macro (3 -> stem channels), BN, ReLU."""
        return ConvLayer(3, self.stem_channels, (3, 3), (self.stem_stride,) * 2, (1, 1))

    def head_layer(self, scale: float) -> ConvLayer:
        """The head's 1x1 conv to head channels, ReLU; before global average pool and the FC.
        No BN follows it, so (unlike every other conv) it has a bias."""
        return ConvLayer(self.last_channels(scale), self.head_channels, (1, 1), bn=False, bias=True)

    @property
    def stem_out_resolution(self) -> int:
        return (self.input - 1) // self.stem_stride + 1

    def slots(self, scale: float) -> list[Slot]:
        """Every cell slot, in order, with its layer position."""
        slots: list[Slot] = []
        cin, res = self.stem_channels, self.stem_out_resolution
        for stage_index, (stage, cout) in enumerate(zip(self.stages, self.stage_channels(scale))):
            for i in range(stage.cells):
                cell_type = stage.first if i == 0 else "N"
                stride = 2 if cell_type == "R" else 1
                if cell_type == "N" and cin != cout:
                    raise SpecError(
                        f"macro {self.name}: stage {stage_index + 1} starts with a normal cell but "
                        f"changes channels {cin} -> {cout}; its first cell must be R or E")
                pos = Position(cell_type, cin, cout, res, stride)
                slots.append(Slot(len(slots), stage_index, pos))
                cin, res = cout, pos.out_resolution
        return slots

    def positions(self, scale: float) -> list[Position]:
        """The distinct layer positions, in network order."""
        return list(dict.fromkeys(s.position for s in self.slots(scale)))

    def last_channels(self, scale: float) -> int:
        return self.stage_channels(scale)[-1]

    def final_resolution(self, scale: float) -> int:
        slots = self.slots(scale)
        return slots[-1].position.out_resolution if slots else self.stem_out_resolution


def _pos_int(raw: dict[str, Any], field: str, where: str) -> int:
    value = raw.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(f"{where}.{field}: expected a positive integer, got {value!r}")
    return value


def macro_from_dict(name: str, raw: Any, where: str) -> Macro:
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: expected an object with input/stem/stages/head, got {raw!r}")
    for field in ("stem", "head"):
        if not isinstance(raw.get(field), dict):
            raise SpecError(f"{where}.{field}: expected an object, got {raw.get(field)!r}")
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise SpecError(f"{where}.stages: expected a non-empty list of stages")
    stages = []
    for i, st in enumerate(stages_raw):
        w = f"{where}.stages[{i}]"
        if not isinstance(st, dict):
            raise SpecError(f"{w}: expected an object with channels/cells/first, got {st!r}")
        first = st.get("first")
        if first not in CELL_TYPES:
            raise SpecError(f"{w}.first: expected one of N, R, E, got {first!r}")
        stages.append(Stage(_pos_int(st, "channels", w), _pos_int(st, "cells", w), first))
    macro = Macro(
        name=name,
        input=_pos_int(raw, "input", where),
        stem_channels=_pos_int(raw["stem"], "channels", f"{where}.stem"),
        stem_stride=_pos_int(raw["stem"], "stride", f"{where}.stem"),
        stages=tuple(stages),
        head_channels=_pos_int(raw["head"], "conv1x1", f"{where}.head"),
        classes=_pos_int(raw["head"], "classes", f"{where}.head"),
    )
    macro.slots(1.0)  # rejects a normal-first stage that changes channels
    return macro
