"""`hwnas table build`: measure every entry and write the table after every group.

Each group (the entries of one layer position; then stem and head) is timed interleaved with the
table's reference network (hwnas.profiling.reference), and every entry is recorded as its ratio
to the reference and, in milliseconds, that ratio times the reference's level over the build.
The file is rewritten atomically whenever entries finish, so a build killed at any moment loses
only the group under measurement; `resume=True` continues it, refusing a file whose metadata
(space, macro, scale, batch, backend, device, software, protocol, reference, shard) differ. The
resumed groups are referred to the same reference, whatever the machine's speed now: the level is
the median over all groups, and each group records how many times the build had been resumed.
With `shard`, only that shard's slice of the entries is measured, into a part for `hwnas table
merge` (hwnas.profiling.shards); calibration waits for the merged table. With `keys`, only those
entries are measured, with the same protocol and reference, and the table is left incomplete and
uncalibrated for the caller to finish (hwnas.profiling.transfer).
"""

from __future__ import annotations

import random
from collections.abc import Collection
from pathlib import Path
from typing import Any

from hwnas.errors import HwnasError
from hwnas.profiling.backends import Backend
from hwnas.profiling.combination import COMBINATION
from hwnas.profiling.entries import load_entry, plan_groups
from hwnas.profiling.protocol import Protocol, Runner, measure_referred
from hwnas.profiling.reference import (LEVEL_FIELD, REFERENCE_SEED, record_group, refer_entries, reference_definition,
                                       reference_spec)
from hwnas.profiling.shards import Shard, part_meta
from hwnas.profiling.table import PART_FIELD, VERSION, Table, identity_differences, utc_now
from hwnas.progress import progress_bar
from hwnas.spaces.arch import Space
from hwnas.spaces.macro import Macro

STEM_AND_HEAD = "stem+head"  # the name of the last group in the reference's record


def table_meta(space: Space, macro: Macro, scale: float, batch: int, backend: Backend,
               protocol: Protocol) -> dict[str, Any]:
    described = backend.describe()
    timed = backend.measures_latency
    return {
        "space": space.name, "space_def": space.to_dict(), "macro": macro.name, "macro_def": macro.to_dict(),
        "positions": [p.key for p in macro.positions(scale)], "scale": scale, "batch": batch,
        "resolution": macro.input, "precision": backend.precision,
        "backend": {k: described[k] for k in described if k not in ("device", "software")},
        "device": described["device"], "software": described["software"],
        "protocol": protocol.to_dict() if timed else None,
        "statistic": protocol.statistic if timed else None,
        "reference": reference_definition(space, macro, scale) if timed else None,
        "units": {"latency": "ms per batch: the ratio times the reference network's level (meta.reference_level: "
                             "the median over the build's groups of the reference's median time in the group)",
                  "ratio": "the median over rounds of the entry's time / the reference network's time in the "
                           "same round",
                  "macs": "per image", "params": "count"} if timed else
                 {"macs": "per image", "params": "count"},
        "combination": COMBINATION,
    }


def old_format_refusal(table: Table, path: str | Path, doing: str) -> None:
    """Refuse to extend a table of an older format (its entries were measured another way)."""
    if table.version != VERSION:
        raise HwnasError(f"cannot {doing} {path}: it is a table of format {table.version}, measured with the "
                         f"drift-probe protocol; this hwnas measures entries as ratios to a reference network "
                         f"(format {VERSION}): build a new table with 'hwnas table build'")


def build_table(space: Space, macro: Macro, scale: float, backend: Backend, batch: int, out: str | Path,
                resume: bool = False, protocol: Protocol | None = None, seed: int = 0,
                progress: bool = True, shard: Shard | None = None, keys: Collection[str] | None = None) -> Table:
    """Profile every op of `space` at every position of `macro`, then calibrate; written to `out`
    whole after every group of entries (`resume=True` continues an interrupted build).

    `keys` restricts the build to those entries of the plan (in plan order and groups, so they
    are measured as a whole build measures them); such a build neither calibrates nor completes
    the table."""
    protocol = protocol or Protocol()
    meta = table_meta(space, macro, scale, batch, backend, protocol)
    groups = plan_groups(space, macro, scale, batch)
    if shard:
        meta[PART_FIELD] = part_meta(groups, shard)
    out = Path(out)
    if out.exists():
        if not resume:
            raise HwnasError(f"{out} exists; pass --resume to continue it, or choose another -o")
        table = Table.load(out)
        old_format_refusal(table, out, "resume")
        diffs = identity_differences(table.identity(), {k: meta.get(k) for k in table.identity()})
        if diffs:
            raise HwnasError(f"cannot resume {out}: it was measured with other settings ("
                             + "; ".join(diffs) + "); build a new table with another -o")
        if table.meta.get(PART_FIELD) != meta.get(PART_FIELD):
            raise HwnasError(f"cannot resume {out}: it is {_part_name(table.meta)}, not {_part_name(meta)}; "
                             f"resume it with the --shard it was built with")
    else:
        table = Table({**meta, "created": utc_now(), "complete": False})
    planned = {e.key for g in groups for e in g}
    if keys is not None:
        if shard:
            raise ValueError("a build takes a shard or a key subset, not both")
        unknown = sorted(set(keys) - planned)
        if unknown:
            raise HwnasError(f"'{unknown[0]}' is not an entry of the table's plan ({space.name} on {macro.name})")
    mine = set(keys) if keys is not None else set(meta[PART_FIELD]["keys"]) if shard else planned
    todo = [[e for e in group if e.key in mine and e.key not in table.entries] for group in groups]
    total = len(mine)
    resumed = 1 + max((g.get("resumed", 0) for g in table.meta.get(LEVEL_FIELD, {}).get("groups", [])), default=-1)
    bar = progress_bar(total, f"shard {shard}" if shard else "table", unit="entry", enabled=progress,
                       initial=total - sum(len(g) for g in todo))
    rng = random.Random(seed)
    calibrating = (keys is None and shard is None and backend.measures_latency and "calibration" not in table.meta
                   and bool(protocol.calibration_architectures))
    reference: Runner | None = None
    try:
        if backend.measures_latency and (any(todo) or calibrating):
            reference = load_entry(backend, reference_spec(table), REFERENCE_SEED)
        for group in todo:
            if not group:
                continue
            name = group[0].position or STEM_AND_HEAD
            bar.set_postfix_str(name)
            if backend.measures_latency:
                assert reference is not None
                runners = {e.key: load_entry(backend, e, seed) for e in group}
                try:
                    result = measure_referred(runners, reference, protocol, rng)
                finally:
                    for r in runners.values():
                        r.close()
                record_group(table, name, result.reference, entries=len(group), resumed=resumed)
                for e in group:
                    table.entries[e.key] = {**e.record(), "ratio": result.ratios[e.key].to_dict()}
                refer_entries(table)
            else:
                for e in group:
                    table.entries[e.key] = e.record()
            table.meta["updated"] = utc_now()
            # a part is complete when its entries are; a whole table once calibrated
            table.meta["complete"] = keys is None and len(table.entries) == total and (
                shard is not None or not backend.measures_latency)
            table.save(out)
            bar.update(len(group))
        bar.close()
        if calibrating and len(table.entries) == total:
            calibrate_table(table, backend, protocol, seed, out, progress, reference)
    finally:
        bar.close()
        if reference is not None:
            reference.close()
    if keys is None and not table.meta.get("complete") and len(table.entries) == total and not calibrating:
        table.meta["complete"] = True  # nothing left to measure or calibrate
        table.save(out)
    return table


def calibrate_table(table: Table, backend: Backend, protocol: Protocol, seed: int, out: str | Path,
                    progress: bool = True, reference: Runner | None = None) -> Table:
    """Time random architectures whole (validate.calibrate), record the factor, complete the table."""
    from hwnas.profiling.validate import calibrate

    table.meta["calibration"] = calibrate(table, backend, protocol, seed, progress="calibrate" if progress else None,
                                          reference=reference)
    table.meta["updated"] = utc_now()
    table.meta["complete"] = True
    table.save(out)
    return table


def calibrate_file(path: str | Path, seed: int = 0, progress: bool = True) -> Table:
    """Calibrate a whole table in place (a merged sharded build), on a device of the table's type.

    The file is locked meanwhile: another process writing it (a build, a calibration) is refused."""
    from hwnas.files import exclusive
    from hwnas.profiling import shipped

    if not Path(path).is_file():  # refused before the lock makes a missing folder
        Table.load(path)  # why not, in one line (no such file, a folder...)
        raise HwnasError(f"{path} names a table shipped with hwnas: calibrate changes a table file in place; "
                         f"calibrate a copy of it (the shipped tables are in {shipped.tables_dir()})")
    with exclusive(path, "lookup table"):
        return _calibrate_file(path, seed, progress)


def _calibrate_file(path: str | Path, seed: int, progress: bool) -> Table:
    from hwnas.profiling.shards import missing_keys
    from hwnas.profiling.validate import backend_for

    table = Table.load(path)
    old_format_refusal(table, path, "calibrate")
    table.require_whole()
    missing = missing_keys(table)
    if missing:
        raise HwnasError(f"{path} lacks {len(missing)} entr{'y' if len(missing) == 1 else 'ies'} (first: "
                         f"'{missing[0]}'): finish its build with --resume before calibrating it")
    backend = backend_for(table, "calibrate")
    protocol = Protocol.from_dict(table.meta["protocol"])
    here = table_meta(table.space(), table.macro(), float(table.meta["scale"]), int(table.meta["batch"]), backend,
                      protocol)
    diffs = identity_differences(table.identity(), {k: here.get(k) for k in table.identity()})
    if diffs:
        raise HwnasError(f"cannot calibrate {path} on the current device: it was measured with other settings "
                         f"({'; '.join(diffs)}); calibrate it where its parts were measured")
    if not protocol.calibration_architectures:
        raise HwnasError(f"{path} was built with a protocol that calibrates on no architecture "
                         f"(calibration_architectures = 0)")
    return calibrate_table(table, backend, protocol, seed, path, progress)


def _part_name(meta: dict[str, Any]) -> str:
    part = meta.get(PART_FIELD)
    return f"shard {part['index']}/{part['count']}" if part else "a whole table (no --shard)"


