"""The lookup-table file: one versioned JSON of metadata and entries.

Keys a person can read, one function each, used everywhere a key is needed:
`dw_k5_t3@N-64-64-28-s1` (an op at a position), `stem`, `head`, and per position the merge of
a multi-branch cell: `merge_add@POS` (one elementwise add of two cell outputs) and
`merge_scale@POS` (the division by the number of terms).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hwnas.errors import HwnasError, SpecError
from hwnas.files import check_format, read_json, write_json
from hwnas.profiling.protocol import Protocol, Stats
from hwnas.ranges import BATCH, COUNT, NON_NEGATIVE, POSITIVE, SCALE, TALLY
from hwnas.spaces.arch import Space, space_from_dict
from hwnas.spaces.macro import Macro, Position, macro_from_dict
from hwnas.spaces.ops import OpSpec

FORMAT = "hwnas-lookup-table"
# 2: entries are ratios to a reference network timed in the same rounds, in milliseconds at the
# reference's level (meta.reference, meta.reference_level). 1: entries as timed, with a drift
# probe; still read (predict, show, validate, check), not extended (resume, merge, calibrate).
VERSION = 2
READABLE_VERSIONS = (1, 2)
STEM_KEY, HEAD_KEY = "stem", "head"
# Metadata that must be equal for two measurements to belong in one table (resume, validate).
IDENTITY_FIELDS = ("space", "space_def", "macro", "macro_def", "scale", "batch", "resolution", "precision", "backend",
                   "device", "software", "protocol", "reference")
# The metadata field of a part of a sharded build (its shard and the keys it owns); a merged
# table keeps each part's timestamps and reference level under "shards" instead.
PART_FIELD = "shard"
# How an entry came to be (its `origin`): measured, or transferred from a table measured on another
# device (hwnas.profiling.transfer; the entry's `transfer` holds its source latency and predicted
# uncertainty, the metadata's `transfer` the source, the selection and the model). An entry
# without the field was measured: every table before transfers.
ORIGIN_FIELD = "origin"
MEASURED, TRANSFERRED = "measured", "transferred"
TRANSFER_FIELD = "transfer"


def utc_now() -> str:
    """A table's `created`/`updated` timestamp: UTC, to the second."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


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
    version: int = VERSION  # the format it was read as (and is written as)

    @property
    def has_latency(self) -> bool:
        return bool(self.meta.get("backend", {}).get("name") not in (None, "none"))

    @property
    def statistic(self) -> str:
        return str(self.meta.get("statistic", "median"))

    @property
    def positions(self) -> list[str]:
        """The layer positions the table prices (keys such as N-64-64-28-s1)."""
        return list(self.meta.get("positions", []))

    def entry(self, key: str) -> dict[str, Any]:
        try:
            return self.entries[key]
        except KeyError:
            position = key.partition("@")[2]
            if position and position not in self.positions:
                raise HwnasError(f"the table has no position {position} (needed for '{key}'); its positions are "
                                 f"{', '.join(self.positions)}: build a table for this macro-architecture") from None
            state = "" if self.meta.get("complete") else " (the table is incomplete: finish it with --resume)"
            raise HwnasError(f"the table has no entry '{key}'{state}") from None

    def latency(self, key: str) -> float:
        entry = self.entry(key)
        if "latency" not in entry:
            raise HwnasError(f"the table's entry '{key}' has no latency (backend "
                             f"{self.meta.get('backend', {}).get('name')}): it prices MACs and params only")
        return Stats.from_dict(entry["latency"]).value(self.statistic)

    def ratio(self, key: str) -> float:
        """An entry's ratio to the table's reference network (format 2): what two tables timing the
        same reference compare, whatever state each one's machine was in."""
        entry = self.entry(key)
        if "ratio" not in entry:
            raise HwnasError(f"the table's entry '{key}' has no ratio to a reference network (a table of format "
                             f"{self.version}, or one without latency)")
        return Stats.from_dict(entry["ratio"]).value(self.statistic)

    def origin(self, key: str) -> str:
        """'measured' or 'transferred' (hwnas.profiling.transfer)."""
        return str(self.entry(key).get(ORIGIN_FIELD, MEASURED))

    @property
    def transferred(self) -> list[str]:
        """The keys of the entries transferred from another device's table, not measured."""
        return [k for k, e in self.entries.items() if e.get(ORIGIN_FIELD, MEASURED) == TRANSFERRED]

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
        return {"format": FORMAT, "version": self.version, "meta": self.meta, "entries": self.entries}

    def save(self, path: str | Path) -> None:
        """Atomically: a reader (or a kill) sees the old file or the new one, never half of one."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Table:
        """A table file, or a shipped table by name (hwnas.profiling.shipped: "latency19_ort-cpu_b16")."""
        from hwnas.profiling.shipped import names, resolve

        path = resolve(path)
        if not path.exists() and len(path.parts) == 1 and names():
            raise HwnasError(f"no such file or folder: {path}; give a table file's path, or the name of a table "
                             f"shipped with hwnas ({', '.join(names())})")
        raw = read_json(path, "lookup table")
        old = isinstance(raw, dict) and raw.get("format") == FORMAT and raw.get("version") in READABLE_VERSIONS
        if not old:
            raw = check_format(raw, path, FORMAT, VERSION, "hwnas lookup table", "rebuild it with 'hwnas table build'")
        try:
            check_table(raw)
        except SpecError as exc:
            raise HwnasError(f"{path} is a damaged lookup table: {exc}; rebuild it with 'hwnas table build'") from None
        return cls(raw["meta"], raw["entries"], int(raw["version"]))


# The fields of a table that hwnas reads, with their types and ranges: a damaged or hand-edited
# table is refused when loaded, naming the field, instead of failing somewhere later.
STAT_FIELDS = ("min", "median", "mean", "std")


def _want(ok: bool, where: str, what: str, value: Any) -> None:
    if not ok:
        raise SpecError(f"{where} must be {what} (got {json.dumps(value)[:60]})")


def _stats(raw: Any, where: str) -> None:
    _want(isinstance(raw, dict), where, "an object of latency statistics", raw)
    TALLY.check(raw.get("count"), f"{where}.count")
    for name in STAT_FIELDS:
        NON_NEGATIVE.check(raw.get(name), f"{where}.{name}")
    flags = raw.get("flags", [])
    _want(isinstance(flags, list) and all(isinstance(f, str) for f in flags), f"{where}.flags", "a list of names",
          flags)


def check_table(raw: dict[str, Any]) -> None:
    meta, entries = raw.get("meta"), raw.get("entries")
    _want(isinstance(meta, dict), "meta", "an object", meta)
    _want(isinstance(entries, dict), "entries", "an object", entries)
    assert isinstance(meta, dict) and isinstance(entries, dict)
    for name in ("space", "macro", "precision"):
        _want(isinstance(meta.get(name), str), f"meta.{name}", "a name", meta.get(name))
    space_from_dict(meta["space"], meta.get("space_def"), "meta.space_def")
    macro_from_dict(meta["macro"], meta.get("macro_def"), "meta.macro_def")
    SCALE.check(meta.get("scale"), "meta.scale")
    BATCH.check(meta.get("batch"), "meta.batch")
    backend = meta.get("backend")
    _want(isinstance(backend, dict) and isinstance(backend.get("name"), str), "meta.backend",
          "an object with a 'name'", backend)
    _want(isinstance(meta.get("device", {}), dict), "meta.device", "an object", meta.get("device"))
    statistic = meta.get("statistic")
    timed = isinstance(backend, dict) and backend["name"] != "none"  # latencies are priced by the statistic
    _want(statistic in STAT_FIELDS or (statistic is None and not timed), "meta.statistic",
          f"one of {', '.join(STAT_FIELDS)}", statistic)
    protocol = meta.get("protocol")
    if protocol is not None:
        _want(isinstance(protocol, dict), "meta.protocol", "an object", protocol)
        numeric = {f.name for f in fields(Protocol) if f.type in ("int", "float", int, float)}
        for name in numeric & protocol.keys():
            NON_NEGATIVE.check(protocol[name], f"meta.protocol.{name}")
    if "calibration" in meta:
        calibration = meta["calibration"]
        _want(isinstance(calibration, dict), "meta.calibration", "an object", calibration)
        POSITIVE.check(calibration.get("factor"), "meta.calibration.factor")
    if "probe_baseline" in meta:
        _stats(meta["probe_baseline"], "meta.probe_baseline")
    reference = meta.get("reference")
    if reference is not None:
        _want(isinstance(reference, dict) and isinstance(reference.get("cells"), list), "meta.reference",
              "an object with the reference network's 'cells'", reference)
    if "reference_level" in meta:
        groups = meta["reference_level"].get("groups") if isinstance(meta["reference_level"], dict) else None
        _want(isinstance(groups, list) and all(isinstance(g, dict) for g in groups), "meta.reference_level.groups",
              "a list of objects", groups)
        assert isinstance(groups, list)
        for i, group in enumerate(groups):
            POSITIVE.check(group.get("median_ms"), f"meta.reference_level.groups[{i}].median_ms")
    if PART_FIELD in meta:  # a part of a sharded build: which shard, and the keys it owns
        part = meta[PART_FIELD]
        where = f"meta.{PART_FIELD}"
        _want(isinstance(part, dict), where, "an object (index, count, keys)", part)
        count = COUNT.check(part.get("count"), f"{where}.count")
        index = COUNT.check(part.get("index"), f"{where}.index")
        _want(index <= count, f"{where}.index", f"at most the count ({count})", index)
        keys = part.get("keys")
        _want(isinstance(keys, list) and all(isinstance(k, str) for k in keys), f"{where}.keys",
              "a list of entry keys", keys)
    for key, entry in entries.items():
        where = f"entries[{json.dumps(key)}]"
        _want(isinstance(entry, dict), where, "an object", entry)
        for name in ("macs", "params"):
            TALLY.check(entry.get(name), f"{where}.{name}")
        for name in ("latency", "ratio"):
            if name in entry:
                _stats(entry[name], f"{where}.{name}")
        origin = entry.get(ORIGIN_FIELD, MEASURED)
        _want(origin in (MEASURED, TRANSFERRED), f"{where}.{ORIGIN_FIELD}", f"'{MEASURED}' or '{TRANSFERRED}'",
              origin)
        if origin == TRANSFERRED:
            transfer = entry.get("transfer")
            _want(isinstance(transfer, dict), f"{where}.transfer", "an object (source_ms, uncertainty)", transfer)
            assert isinstance(transfer, dict)
            for name in ("source_ms", "uncertainty"):
                NON_NEGATIVE.check(transfer.get(name), f"{where}.transfer.{name}")


def identity_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The metadata fields on which two tables' identities differ, with both values."""
    out = []
    for key in IDENTITY_FIELDS:
        if a.get(key) != b.get(key):
            out.append(f"{key}: {json.dumps(a.get(key))} vs {json.dumps(b.get(key))}")
    return out
