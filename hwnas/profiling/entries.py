"""What a table measures: the entries of a space on a macro-architecture, grouped by position."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from hwnas.costs import Cost, head_cost, op_cost, stem_cost
from hwnas.model.blocks import Operation
from hwnas.model.stem_head import Head, Stem
from hwnas.profiling.backends import Backend
from hwnas.profiling.protocol import Runner
from hwnas.profiling.table import HEAD_KEY, STEM_KEY, merge_add_key, merge_scale_key, op_key
from hwnas.spaces.arch import Space
from hwnas.spaces.macro import Macro


class MergeAdd(nn.Module):
    """One add of two branch outputs, as a multi-branch cell adds them."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class MergeScale(nn.Module):
    """The mean's division by the number of terms."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / 3


@dataclass(frozen=True)
class EntrySpec:
    key: str
    kind: str  # op | stem | head | merge_add | merge_scale
    build: Callable[[], nn.Module]
    input_shapes: tuple[tuple[int, ...], ...]
    cost: Cost  # per image
    op: str | None = None
    position: str | None = None

    def record(self) -> dict[str, object]:
        out: dict[str, object] = {"kind": self.kind, "macs": self.cost.macs, "params": self.cost.params}
        if self.op:
            out["op"] = self.op
        if self.position:
            out["position"] = self.position
        return out


def plan_groups(space: Space, macro: Macro, scale: float, batch: int) -> list[list[EntrySpec]]:
    """One group per position (its ops and merge entries), then stem and head."""
    groups = []
    for pos in macro.positions(scale):
        x = (batch, pos.cin, pos.resolution, pos.resolution)
        y = (batch, pos.cout, pos.out_resolution, pos.out_resolution)
        group = [EntrySpec(op_key(op, pos), "op", functools.partial(Operation, op, pos), (x,),
                           op_cost(op, pos), op.name, pos.key) for op in space.ops]
        group.append(EntrySpec(merge_add_key(pos), "merge_add", MergeAdd, (y, y), Cost(), None, pos.key))
        group.append(EntrySpec(merge_scale_key(pos), "merge_scale", MergeScale, (y,), Cost(), None, pos.key))
        groups.append(group)
    last, res = macro.last_channels(scale), macro.final_resolution(scale)
    groups.append([
        EntrySpec(STEM_KEY, "stem", functools.partial(Stem, macro), ((batch, 3, macro.input, macro.input),),
                  stem_cost(macro)),
        EntrySpec(HEAD_KEY, "head", functools.partial(Head, macro, scale), ((batch, last, res, res),), head_cost(macro, scale)),
    ])
    return groups


def load_entry(backend: Backend, spec: EntrySpec, seed: int) -> Runner:
    """An entry's graph on a backend, its weights seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = spec.build()
    return backend.load(module, spec.input_shapes)
