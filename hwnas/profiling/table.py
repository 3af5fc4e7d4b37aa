"""The lookup-table file: one versioned JSON of metadata and entries.

Keys a person can read, one function each, used everywhere a key is needed:
`dw_k5_t3@N-64-64-28-s1` (an op at a position), `stem`, `head`, and per position the merge of
a multi-branch cell: `merge_add@POS` (one elementwise add of two cell outputs) and
`merge_scale@POS` (the division by the number of terms).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwnas.errors import HwnasError
from hwnas.files import check_format, read_json, write_json
from hwnas.profiling.protocol import Stats
from hwnas.spaces.arch import Space, space_from_dict
from hwnas.spaces.macro import Macro, Position, macro_from_dict
from hwnas.spaces.ops import OpSpec

FORMAT = "hwnas-lookup-table"
VERSION = 1
STEM_KEY, HEAD_KEY = "stem", "head"
# Metadata that must be equal for two measurements to belong in one table (resume, validate).
IDENTITY_FIELDS = ("space", "space_def", "macro", "macro_def", "scale", "batch", "resolution", "precision", "backend",
                   "device", "software", "protocol")
# The metadata field of a part of a sharded build (its shard and the keys it owns); a merged
# table keeps each part's timestamps and probe baseline under "shards" instead.
PART_FIELD = "shard"
# How a multi-branch cell is priced from its entries (stated in every table).
COMBINATION = ("network = calibration factor * (stem + head + sum of cells); cell = sum of its branches' entries "
               "+ (terms - 1) * merge_add + merge_scale if terms > 1, where terms = branches + 1 for a normal cell "
               "(the identity), branches otherwise. The factor (meta.calibration) is the median ratio measured / "
               "summed over random architectures timed whole: isolated graphs pay boundary costs (layout "
               "reorders, cold inputs, unfused adds) that a whole network does not")


def op_key(op: OpSpec, pos: Position) -> str:
    return f"{op.name}@{pos.key}"


def merge_add_key(pos: Position) -> str:
    return f"merge_add@{pos.key}"


def merge_scale_key(pos: Position) -> str:
    return f"merge_scale@{pos.key}"


@dataclass
class Table:
    meta: dict[str, Any]
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def has_latency(self) -> bool:
        return bool(self.meta.get("backend", {}).get("name") not in (None, "none"))

    @property
    def statistic(self) -> str:
        return str(self.meta.get("statistic", "median"))

    def entry(self, key: str) -> dict[str, Any]:
        try:
            return self.entries[key]
        except KeyError:
            state = "" if self.meta.get("complete") else " (the table is incomplete: finish it with --resume)"
            raise HwnasError(f"the table has no entry '{key}'{state}") from None

    def latency(self, key: str) -> float:
        entry = self.entry(key)
        if "latency" not in entry:
            raise HwnasError(f"the table's entry '{key}' has no latency (backend "
                             f"{self.meta.get('backend', {}).get('name')}): it prices MACs and params only")
        return Stats.from_dict(entry["latency"]).value(self.statistic)

    def space(self) -> Space:
        """The table's own copy of its space's definition."""
        return space_from_dict(self.meta["space"], self.meta["space_def"], "table metadata: space_def")

    def macro(self) -> Macro:
        return macro_from_dict(self.meta["macro"], self.meta["macro_def"], "table metadata: macro_def")

    @property
    def calibration_factor(self) -> float:
        return float(self.meta.get("calibration", {}).get("factor", 1.0))

    @property
    def part(self) -> str | None:
        """'I/N' for a part of a sharded build, None for a whole table."""
        raw = self.meta.get(PART_FIELD)
        return f"{raw['index']}/{raw['count']}" if raw else None

    def require_whole(self) -> None:
        if self.part:
            raise HwnasError(f"the table is shard {self.part} of a sharded build, with that shard's entries "
                             f"only: merge all parts with 'hwnas table merge' and use the merged table")

    def identity(self) -> dict[str, Any]:
        return {k: self.meta.get(k) for k in IDENTITY_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "meta": self.meta, "entries": self.entries}

    def save(self, path: str | Path) -> None:
        """Atomically: a reader (or a kill) sees the old file or the new one, never half of one."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Table:
        raw = check_format(read_json(path, "lookup table"), path, FORMAT, VERSION, "hwnas lookup table",
                           "rebuild it with 'hwnas table build'")
        if not isinstance(raw.get("meta"), dict) or not isinstance(raw.get("entries"), dict):
            raise HwnasError(f"{path} is a damaged lookup table: 'meta' and 'entries' must be objects")
        return cls(raw["meta"], raw["entries"])


def identity_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The metadata fields on which two tables' identities differ, with both values."""
    out = []
    for key in IDENTITY_FIELDS:
        if a.get(key) != b.get(key):
            out.append(f"{key}: {json.dumps(a.get(key))} vs {json.dumps(b.get(key))}")
    return out
