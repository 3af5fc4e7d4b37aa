"""A table's reference graph: what it is, its level, and how the machine runs against it now.

Every latency of a table is measured as a ratio to one reference graph timed in the same rounds
(hwnas.profiling.protocol.measure_referred) and brought back to milliseconds with the
reference's *level*: the median, over the build's groups, of the reference's median time in the
group. The level is the one machine state that the table's entries, its calibration, `hwnas
validate` and `hwnas predict --check` all refer to.

The reference is a small whole network of the table's own space and macro-architecture: the
stem, the space's cheapest op (fewest MACs over the positions) in the first cell of every layer
position, the other (normal) cells empty, and the head. It has every tensor size the entries have
and runs like the networks that the table prices, so a change of the machine's speed moves it as
it moves them; a single op (a stem alone) moves with the machine's compute but not with the memory
traffic of whole networks (docs/protocol.md). Its weights are seeded by REFERENCE_SEED: every table
of a space, macro-architecture, scale and batch times the same graph.

Tables of format 1 (the drift-probe protocol) have no reference network; the stem timed alone
before their first group (`probe_baseline`) serves as their reference for checks and validation.
"""

from __future__ import annotations

import contextlib
import functools
import random
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hwnas.costs import network_cost, op_cost, stem_cost
from hwnas.errors import HwnasError
from hwnas.model.network import build_network
from hwnas.model.stem_head import Stem
from hwnas.profiling.backends import Backend
from hwnas.profiling.entries import EntrySpec, load_entry
from hwnas.profiling.protocol import Protocol, Runner, Stats, time_alone
from hwnas.profiling.table import Table
from hwnas.spaces.arch import Architecture, Space
from hwnas.spaces.macro import Macro
from hwnas.spaces.sampling import slot_architecture

REFERENCE_SEED = 0
LEVEL_FIELD = "reference_level"  # meta: the reference's times per group and the level they give


def reference_op(space: Space, macro: Macro, scale: float) -> int:
    """The space's op with the fewest MACs summed over the positions (the first of equals)."""
    positions = macro.positions(scale)
    return min(range(len(space.ops)), key=lambda i: sum(op_cost(space.ops[i], p).macs for p in positions))


def reference_definition(space: Space, macro: Macro, scale: float) -> dict[str, Any]:
    """The reference network as a table records it (meta.reference; part of the table's identity)."""
    op = reference_op(space, macro, scale)
    seen: set[Any] = set()
    cells = []
    for slot in macro.slots(scale):
        first = slot.position not in seen or slot.position.cell_type != "N"
        seen.add(slot.position)
        cells.append([op] if first else [])
    return {"graph": "network", "op": space.ops[op].name, "cells": cells, "seed": REFERENCE_SEED}


def reference_architecture(table: Table) -> Architecture:
    raw = table.meta["reference"]
    return slot_architecture(table.space(), table.macro(), float(table.meta["scale"]), raw["cells"], "reference")


@dataclass(frozen=True)
class Reference:
    """A table's reference graph (built on demand) and its level in milliseconds."""

    spec: EntrySpec
    level_ms: float
    description: str
    group_levels: tuple[float, ...]  # each group's reference median / the level (format 1: none)

    @property
    def build_range(self) -> tuple[float, float] | None:
        return (min(self.group_levels), max(self.group_levels)) if self.group_levels else None


def stem_spec(macro: Macro, batch: int) -> EntrySpec:
    """The stem alone: the drift probe of tables of format 1."""
    return EntrySpec("reference", "stem", functools.partial(Stem, macro), ((batch, 3, macro.input, macro.input),),
                     stem_cost(macro))


def network_spec(arch: Architecture, batch: int, seed: int) -> EntrySpec:
    return EntrySpec("reference", "network", functools.partial(build_network, arch, seed),
                     ((batch, 3, arch.macro.input, arch.macro.input),), network_cost(arch).total)


def reference_spec(table: Table) -> EntrySpec:
    """The graph a table refers its latencies to (its network; format 1: the stem)."""
    batch = int(table.meta["batch"])
    if "reference" not in table.meta:
        return stem_spec(table.macro(), batch)
    return network_spec(reference_architecture(table), batch, int(table.meta["reference"]["seed"]))


def reference_of(table: Table) -> Reference:
    """The table's reference and level, refused with the reason when the table has none."""
    if not table.has_latency:
        raise HwnasError("the table holds no latency (backend 'none'): it has no reference to check or refer to")
    meta = table.meta
    if "reference" not in meta:
        if "probe_baseline" not in meta:
            raise HwnasError("the table records no reference level (neither a reference network nor a drift-probe "
                             "baseline): rebuild it with 'hwnas table build'")
        return Reference(stem_spec(table.macro(), int(meta["batch"])),
                         Stats.from_dict(meta["probe_baseline"]).median,
                         "the drift probe (the stem alone) of a table of format 1", ())
    record = meta.get(LEVEL_FIELD, {})
    groups = record.get("groups", [])
    if not groups:
        raise HwnasError("the table has no entry measured yet, so no reference level: finish its build with --resume")
    level = float(record.get("level_ms") or level_ms(groups))  # the level its entries were brought to
    return Reference(reference_spec(table), level, f"the reference network ({meta['reference']['op']} at every "
                                                    f"position)", tuple(g["median_ms"] / level for g in groups))


def level_ms(groups: list[dict[str, Any]]) -> float:
    """The level: the median over groups of the reference's median time in the group."""
    return float(statistics.median(float(g["median_ms"]) for g in groups))


def record_group(table: Table, name: str, stats: Stats, **tags: Any) -> None:
    """Add one group's reference times to the table's record (tags: resumed=1, shard='1/2')."""
    record = table.meta.setdefault(LEVEL_FIELD, {"groups": []})
    record["groups"].append({"group": name, "median_ms": stats.to_dict()["median"], "count": stats.count,
                             "spread": round(stats.spread, 5), **tags})


def refer_entries(table: Table) -> None:
    """Bring every entry's ratio to milliseconds at the table's level, and record the level and the
    range of the groups around it. Run whenever groups are added or parts merged (re-anchoring)."""
    record = table.meta.get(LEVEL_FIELD)
    if not record or not record["groups"]:
        return
    level = level_ms(record["groups"])
    record["level_ms"] = float(f"{level:.7g}")
    levels = [g["median_ms"] / level for g in record["groups"]]
    record["range"] = [round(min(levels), 4), round(max(levels), 4)]
    for entry in table.entries.values():
        if "ratio" in entry:
            entry["latency"] = Stats.from_dict(entry["ratio"]).scaled(record["level_ms"]).to_dict()


def speed_words(ratio: float, then: str) -> str:
    """'1.13x slower than THEN' / '1.08x faster than THEN' / 'as fast as THEN (within 0.5%)', for a
    time now over a time then."""
    if ratio >= 1.005:
        return f"{ratio:.2f}x slower than {then}"
    if ratio <= 1 / 1.005:
        return f"{1 / ratio:.2f}x faster than {then}"
    return f"as fast as {then} (within 0.5%)"


def check_machine(table: Table, seed: int = 0) -> dict[str, Any]:
    """Time the table's reference alone now (a few seconds) and compare it with the table's level."""
    from hwnas.profiling.validate import backend_for

    reference = reference_of(table)
    backend = backend_for(table, why="the check compares a device with its own table only; build a table on "
                                      "this device")
    protocol = Protocol.from_dict(table.meta["protocol"])
    with loaded(backend, reference.spec) as runner:
        now = time_alone(runner, protocol, random.Random(seed))
    ratio = now.median / reference.level_ms
    message = f"the machine now runs {speed_words(ratio, 'when the table was built')}"
    detail = f"{reference.description}: {now.median:.4g} ms now, {reference.level_ms:.4g} ms at the table's level"
    if reference.build_range:
        lo, hi = reference.build_range
        detail += f"; during the build its groups ran at {lo:.2f}-{hi:.2f}x that level"
    return {"vs_table": round(ratio, 4), "now_ms": now.to_dict(), "level_ms": reference.level_ms,
            "build_range": list(reference.build_range) if reference.build_range else None,
            "reference": reference.description, "message": message, "detail": detail}


@contextlib.contextmanager
def loaded(backend: Backend, spec: EntrySpec, seed: int = REFERENCE_SEED) -> Iterator[Runner]:
    """A graph loaded on a backend for the duration of a `with` block."""
    runner = load_entry(backend, spec, seed)
    try:
        yield runner
    finally:
        runner.close()
