"""Sharded table builds: which entries shard I of N measures, and merging the parts into one table.

A large space is hundreds of entries on one device type; N devices of that type (GPUs of one
machine, or machines with the same GPU and software) each measure one slice, and the parts are
merged into the table a single build would have written.

The slices are contiguous runs of the build's plan (position after position), cut where the
estimated cost reaches 1/N, 2/N, ... of the total: every position is measured whole on one
device except at most N - 1 positions cut between two neighbouring shards, and shards differ
by at most about one entry's estimated cost. The estimate is half a fixed cost per entry (model
export or engine build, warm-up, the protocol's minimum sample time: what dominates short ops on
a GPU) and half in proportion to the entry's MACs (what dominates long ops on a CPU). It is
computed in integers, so every machine derives the same slices from the same plan.

A part records its shard and the keys it owns; merging refuses parts measured on other devices,
software, protocols or settings (naming the field), overlapping entries and missing ones. Devices
of one type may still run at different speeds (clocks, power limits, cooling, other load): each
part's entries are ratios to the reference network timed on its own device, so the merge brings
them all to one level, the median of all parts' reference groups (re-anchoring through the
reference), and records each part's level.
Calibration (random networks timed whole) needs the whole table, so it runs once after the
merge, on one device of the parts' type: `hwnas table calibrate`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hwnas.errors import HwnasError
from hwnas.profiling.entries import EntrySpec, plan_groups
from hwnas.profiling.protocol import Protocol
from hwnas.profiling.reference import LEVEL_FIELD, level_ms, refer_entries
from hwnas.profiling.table import PART_FIELD, VERSION, Table, identity_differences, utc_now


@dataclass(frozen=True)
class Shard:
    """Shard `index` (1-based) of `count`."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise HwnasError(f"shard {text!r} is not I/N: write e.g. 1/4 for the first of four shards")
        index, count = int(match[1]), int(match[2])
        if not 1 <= index <= count:
            raise HwnasError(f"shard {text}: I must be in 1..N (shards are numbered from 1)")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def entry_weights(groups: Sequence[Sequence[EntrySpec]]) -> list[int]:
    """Estimated cost of each entry, in plan order: n * macs + total macs, n the number of entries.

    Summed over the plan, the fixed part (total macs per entry) and the MACs part weigh the same.
    """
    entries = [e for g in groups for e in g]
    total = sum(e.cost.macs for e in entries)
    if total == 0:
        return [1] * len(entries)
    return [len(entries) * e.cost.macs + total for e in entries]


def assign(groups: Sequence[Sequence[EntrySpec]], count: int) -> list[int]:
    """The shard (1-based) of every entry, in plan order: contiguous slices of equal estimated cost.

    Entry i goes to the shard whose share of the total holds the midpoint of its cost interval.
    """
    weights = entry_weights(groups)
    if count > len(weights):
        raise HwnasError(f"{count} shards for a table of {len(weights)} entries: use at most {len(weights)}")
    total, before, out = sum(weights), 0, []
    for w in weights:
        out.append(count * (2 * before + w) // (2 * total) + 1)
        before += w
    return out


def owned(groups: Sequence[Sequence[EntrySpec]], shard: Shard) -> list[str]:
    """The keys that `shard` measures, in plan order."""
    keys = [e.key for g in groups for e in g]
    return [k for k, s in zip(keys, assign(groups, shard.count)) if s == shard.index]


def estimated_share(groups: Sequence[Sequence[EntrySpec]], shard: Shard) -> float:
    """The fraction of the table's estimated cost that `shard` measures."""
    weights = entry_weights(groups)
    mine = sum(w for w, s in zip(weights, assign(groups, shard.count)) if s == shard.index)
    return mine / sum(weights)


def part_meta(groups: Sequence[Sequence[EntrySpec]], shard: Shard) -> dict[str, Any]:
    return {"index": shard.index, "count": shard.count, "keys": owned(groups, shard)}


def part_of(table: Table) -> Shard | None:
    return Shard.parse(table.part) if table.part else None


def plan_of(table: Table) -> list[list[EntrySpec]]:
    """The build plan of a table, from the table's own copies of its space and macro-architecture."""
    m = table.meta
    return plan_groups(table.space(), table.macro(), float(m["scale"]), int(m["batch"]))


def missing_keys(table: Table) -> list[str]:
    """Keys of the plan (the part's own, for a part) that the table has no entry for, in plan order."""
    shard = part_of(table)
    keys = table.meta[PART_FIELD]["keys"] if shard else [e.key for g in plan_of(table) for e in g]
    return [k for k in keys if k not in table.entries]


def part_level(table: Table) -> float | None:
    """A part's reference level (ms), None for a part that measures no latency."""
    groups = table.meta.get(LEVEL_FIELD, {}).get("groups")
    return level_ms(groups) if groups else None


def needs_calibration(table: Table) -> bool:
    protocol = table.meta.get("protocol")
    return (table.has_latency and "calibration" not in table.meta
            and bool(protocol and Protocol.from_dict(protocol).calibration_architectures))


def merge(parts: Sequence[tuple[str, Table]]) -> Table:
    """One table from all N parts of a sharded build, named by their files in the messages.

    Devices of one type can still run at different speeds (clocks, power limits, cooling, load):
    every part refers its entries to the reference network timed on its own device, and the merge
    re-anchors them all to one level, the median over all parts' reference groups (each group
    tagged with its shard under `reference_level`). A device that ran uniformly slower gives the
    same ratios, so its entries come out as the others' would have.

    The merged table has a single build's metadata and entries (in plan order), with the parts'
    timestamps and reference levels under `shards`; it is complete once calibrated (when it
    measures latency and its protocol calibrates).
    """
    if not parts:
        raise HwnasError("no parts to merge: give the files written by 'hwnas table build --shard I/N'")
    for name, table in parts:
        if table.version != VERSION:
            raise HwnasError(f"{name} is a part of format {table.version} (the drift-probe protocol); this hwnas "
                             f"merges parts of format {VERSION} (entries referred to a reference network): "
                             f"rebuild the parts")
        if part_of(table) is None:
            raise HwnasError(f"{name} is not a part of a sharded build (it was built without --shard)")
    first_name, first = parts[0]
    for name, table in parts[1:]:
        diffs = identity_differences(first.identity(), table.identity())
        if diffs:
            raise HwnasError(f"{first_name} vs {name}: measured differently ({'; '.join(diffs)}): the parts of "
                             "one table must come from one device type, software, protocol and settings")
    count = first.meta[PART_FIELD]["count"]
    by_index: dict[int, str] = {}
    for name, table in parts:
        shard = part_of(table)
        assert shard is not None
        if shard.count != count:
            raise HwnasError(f"{name} is shard {shard} and {first_name} is shard {part_of(first)}: the parts "
                             f"of one table are built with the same N")
        if shard.index in by_index:
            raise HwnasError(f"shard {shard} is given twice ({by_index[shard.index]} and {name}): give each "
                             f"part once")
        by_index[shard.index] = name
    groups = plan_of(first)
    plan = [e.key for g in groups for e in g]
    planned = set(plan)
    if count > len(plan):
        raise HwnasError(f"{first_name} is shard {part_of(first)} of a table of {len(plan)} entries: no build makes "
                         f"more shards than entries (a part edited by hand?)")
    found: dict[str, tuple[str, Table]] = {}
    for name, table in parts:
        for key in table.entries:
            if key not in planned:
                raise HwnasError(f"{name} has an entry '{key}' that is not in the table's plan: is it a part of "
                                 f"this table?")
            if key in found:
                raise HwnasError(f"the entry '{key}' is in both {found[key][0]} and {name}: overlapping parts "
                                 f"(a part edited by hand, or built with another plan) cannot be merged")
            found[key] = (name, table)
    for name, table in parts:  # each part holds its own shard's entries, as this hwnas slices the plan
        shard = part_of(table)
        assert shard is not None
        own = owned(groups, shard)
        if table.meta[PART_FIELD]["keys"] != own:
            raise HwnasError(f"{name} records other entries than shard {shard} of this table owns: a part of another "
                             f"plan (another hwnas version?) or edited by hand cannot be merged; rebuild it")
        mine = set(own)
        strays = [key for key in table.entries if key not in mine]
        if strays:
            raise HwnasError(f"{name} (shard {shard}) holds the entry '{strays[0]}' of another shard: a part edited "
                             f"by hand or copied from another build cannot be merged; rebuild it")
    absent = [i for i in range(1, count + 1) if i not in by_index]
    if absent:
        raise HwnasError(f"shard{'s' if len(absent) > 1 else ''} {', '.join(f'{i}/{count}' for i in absent)} "
                         f"missing: merge all {count} parts")
    missing = [k for k in plan if k not in found]
    if missing:
        owners = assign(groups, count)
        shard_of = dict(zip(plan, owners))
        where = sorted({shard_of[k] for k in missing})
        names = ", ".join(f"{by_index[i]} (shard {i}/{count})" for i in where)
        raise HwnasError(f"{len(missing)} entr{'y is' if len(missing) == 1 else 'ies are'} missing (first: "
                         f"'{missing[0]}') from {names}: finish {'it' if len(where) == 1 else 'them'} with "
                         f"'hwnas table build ... --shard I/N --resume'")
    ordered = [t for _, t in sorted(parts, key=lambda p: p[1].meta[PART_FIELD]["index"])]
    meta = {k: v for k, v in ordered[0].meta.items() if k not in (PART_FIELD, LEVEL_FIELD)}
    meta["created"] = min(str(t.meta.get("created")) for t in ordered)
    meta["updated"] = utc_now()
    meta["shards"] = [{"shard": str(part_of(t)), "entries": len(t.entries), "created": t.meta.get("created"),
                       "updated": t.meta.get("updated"), "reference_level_ms": part_level(t)} for t in ordered]
    levels = [{**g, "shard": str(part_of(t))} for t in ordered for g in t.meta.get(LEVEL_FIELD, {}).get("groups", [])]
    if levels:
        meta[LEVEL_FIELD] = {"groups": levels}
    merged = Table(meta, {key: dict(found[key][1].entries[key]) for key in plan})
    refer_entries(merged)  # every part's ratios at the one level
    merged.meta["complete"] = not needs_calibration(merged)
    return merged
