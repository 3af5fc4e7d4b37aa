"""Pricing an architecture with a table: latency (when measured), MACs and params."""

from __future__ import annotations

from typing import Any

from hwnas.errors import HwnasError
from hwnas.profiling.combination import merge_cost
from hwnas.profiling.table import (HEAD_KEY, STEM_KEY, TRANSFER_FIELD, TRANSFERRED, Table, merge_add_key,
                                   merge_scale_key, op_key)
from hwnas.spaces.arch import Architecture, PlacedCell

LATENCY_UNITS = ("ms per batch, calibrated: each part is its table entries times the calibration factor, "
                 "so the parts add up to the total")


def check_compatible(table: Table, arch: Architecture, batch: int | None = None) -> None:
    table.require_whole()
    meta = table.meta
    if meta.get("space_def") != arch.space.to_dict():
        raise HwnasError(f"architecture {arch.name} uses space {arch.space.name}, the table was built for "
                         f"space {meta.get('space')} (other ops): build a table for {arch.space.name}")
    if meta.get("macro_def") != arch.macro.to_dict():
        raise HwnasError(f"architecture {arch.name} uses macro-architecture {arch.macro.name}, the table "
                         f"was built for {meta.get('macro')} (another definition)")
    if meta.get("scale") != arch.scale:
        raise HwnasError(f"architecture {arch.name} has scale {arch.scale}, the table was built at scale "
                         f"{meta.get('scale')}: build one with --scale {arch.scale}")
    if batch is not None and batch != meta.get("batch"):
        raise HwnasError(f"the table was measured at batch {meta.get('batch')}, not {batch}: latency does not "
                         f"scale linearly with batch; build a table at batch {batch}")


def cell_latency(table: Table, arch: Architecture, placed: PlacedCell) -> tuple[list[float], float]:
    """Each branch's entry and the merge's, summed as measured (before calibration)."""
    pos = placed.slot.position
    branches = [table.latency(op_key(arch.space.ops[i], pos)) for i in placed.ops]
    merge = merge_cost(len(placed.ops), pos.cell_type == "N", table.latency(merge_add_key(pos)),
                       table.latency(merge_scale_key(pos)))
    return branches, merge


def predict(table: Table, arch: Architecture, batch: int | None = None) -> dict[str, Any]:
    """An architecture's MACs and params per image and, from a profiled table, its latency per batch.

    Every latency in the result is calibrated (its entries times the table's calibration factor),
    so the parts (stem, head, cells; a cell's branches and merge) add up to `latency_ms`;
    `latency_ms_uncalibrated` is the plain sum of the entries. From a transferred table
    (hwnas.profiling.transfer) every op says its `origin`, and `transferred` says how much of
    the price rests on entries transferred from another device rather than measured."""
    check_compatible(table, arch, batch)
    timed = table.has_latency
    factor = table.calibration_factor
    cells = []
    summed = 0.0  # the cells' entries, before calibration
    transfer = TRANSFER_FIELD in table.meta and timed
    used: set[str] = {STEM_KEY, HEAD_KEY}
    moved = 0.0  # the transferred entries' part of the price, before calibration
    for pc in arch.placed:
        if not pc.ops:
            continue
        pos = pc.slot.position
        entries = [table.entry(op_key(arch.space.ops[i], pos)) for i in pc.ops]
        cell: dict[str, Any] = {
            "index": pc.slot.index, "position": pos.key,
            "ops": [{"index": i, "name": arch.space.ops[i].name, "macs": e["macs"], "params": e["params"]}
                    for i, e in zip(pc.ops, entries)],
            "macs": sum(e["macs"] for e in entries), "params": sum(e["params"] for e in entries),
        }
        if timed:
            branches, merge = cell_latency(table, arch, pc)
            summed += sum(branches) + merge
            for op, ms in zip(cell["ops"], branches):
                op["latency_ms"] = ms * factor
            cell["merge_ms"] = merge * factor
            cell["latency_ms"] = (sum(branches) + merge) * factor
            if transfer:
                moved += _transferred_part(table, arch, pc, cell, branches, used)
        cells.append(cell)
    stem, head = table.entry(STEM_KEY), table.entry(HEAD_KEY)
    out: dict[str, Any] = {
        "arch": arch.name, "space": arch.space.name, "batch": table.meta.get("batch"),
        "macs": stem["macs"] + head["macs"] + sum(c["macs"] for c in cells),
        "params": stem["params"] + head["params"] + sum(c["params"] for c in cells),
        "stem": {"macs": stem["macs"], "params": stem["params"]},
        "head": {"macs": head["macs"], "params": head["params"]},
        "cells": cells,
    }
    if timed:
        stem_ms, head_ms = table.latency(STEM_KEY), table.latency(HEAD_KEY)
        out["stem"]["latency_ms"] = stem_ms * factor
        out["head"]["latency_ms"] = head_ms * factor
        out["latency_ms"] = out["stem"]["latency_ms"] + out["head"]["latency_ms"] + sum(c["latency_ms"] for c in cells)
        out["latency_ms_uncalibrated"] = stem_ms + head_ms + summed
        out["calibration_factor"] = factor
        out["statistic"] = table.statistic
        out["latency_units"] = LATENCY_UNITS
    if transfer:
        moved += sum(table.latency(k) for k in (STEM_KEY, HEAD_KEY) if table.origin(k) == TRANSFERRED)
        source = table.meta[TRANSFER_FIELD]["source"]
        device = source.get("device") or {}
        out["transferred"] = {
            "entries": sum(table.origin(k) == TRANSFERRED for k in used), "of": len(used),
            "latency_ms": moved * factor, "share": moved / out["latency_ms_uncalibrated"],
            "source": source.get("file"), "source_device": device.get("name", device.get("type")),
        }
    return out


def _transferred_part(table: Table, arch: Architecture, placed: PlacedCell, cell: dict[str, Any],
                      branches: list[float], used: set[str]) -> float:
    """Mark the cell's ops with their origin; the part of its (uncalibrated) latency that rests on
    transferred entries. `used` collects the keys of the entries the price reads."""
    pos = placed.slot.position
    part = 0.0
    for i, op, ms in zip(placed.ops, cell["ops"], branches):
        key = op_key(arch.space.ops[i], pos)
        op["origin"] = table.origin(key)
        used.add(key)
        part += ms if op["origin"] == TRANSFERRED else 0.0
    add, scale = merge_add_key(pos), merge_scale_key(pos)
    moved_add = table.latency(add) if table.origin(add) == TRANSFERRED else 0.0
    moved_scale = table.latency(scale) if table.origin(scale) == TRANSFERRED else 0.0
    merge = merge_cost(len(placed.ops), pos.cell_type == "N", moved_add, moved_scale)
    if merge_cost(len(placed.ops), pos.cell_type == "N", 1.0, 1.0):  # the cell has a merge
        used.update((add, scale))
    return part + merge
