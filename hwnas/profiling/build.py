"""`hwnas table build`: measure every entry and write the table after every group.

The file is rewritten atomically whenever entries finish, so a build killed at any moment
loses only the group under measurement; `resume=True` continues it, refusing a file whose
metadata (space, macro, scale, batch, backend, device, software, protocol) differ.
"""

from __future__ import annotations

import datetime as dt
import random
import sys
from pathlib import Path
from typing import Any

import torch

from hwnas.errors import HwnasError
from hwnas.profiling.backends import Backend
from hwnas.profiling.entries import EntrySpec, plan_groups, probe_entry
from hwnas.profiling.protocol import Protocol, Runner, Stats, measure_group, probe_baseline
from hwnas.profiling.table import COMBINATION, Table, identity_differences
from hwnas.spaces.arch import Space
from hwnas.spaces.macro import Macro


def table_meta(space: Space, macro: Macro, scale: float, batch: int, backend: Backend,
               protocol: Protocol) -> dict[str, Any]:
    described = backend.describe()
    return {
        "space": space.name, "space_def": space.to_dict(), "macro": macro.name, "macro_def": macro.to_dict(),
        "positions": [p.key for p in macro.positions(scale)], "scale": scale, "batch": batch,
        "resolution": macro.input, "precision": backend.precision,
        "backend": {k: described[k] for k in described if k not in ("device", "software")},
        "device": described["device"], "software": described["software"],
        "protocol": protocol.to_dict() if backend.measures_latency else None,
        "statistic": protocol.statistic if backend.measures_latency else None,
        "units": {"latency": "ms per batch", "macs": "per image", "params": "count"},
        "combination": COMBINATION,
    }


def _load(backend: Backend, spec: EntrySpec, seed: int) -> Runner:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = spec.build()
    return backend.load(module, spec.input_shapes)


def build_table(space: Space, macro: Macro, scale: float, backend: Backend, batch: int, out: str | Path,
                resume: bool = False, protocol: Protocol | None = None, seed: int = 0,
                progress: bool = True) -> Table:
    protocol = protocol or Protocol()
    meta = table_meta(space, macro, scale, batch, backend, protocol)
    out = Path(out)
    if out.exists():
        if not resume:
            raise HwnasError(f"{out} exists; pass --resume to continue it, or choose another -o")
        table = Table.load(out)
        diffs = identity_differences(table.identity(), {k: meta.get(k) for k in table.identity()})
        if diffs:
            raise HwnasError(f"cannot resume {out}: it was measured with other settings ("
                             + "; ".join(diffs) + "); build a new table with another -o")
    else:
        table = Table({**meta, "created": _now(), "complete": False})
    groups = plan_groups(space, macro, scale, batch)
    todo = [[e for e in group if e.key not in table.entries] for group in groups]
    total = sum(len(g) for g in groups)
    bar = _progress(total, total - sum(len(g) for g in todo), progress)
    rng = random.Random(seed)
    probe: Runner | None = None
    try:
        if backend.measures_latency and any(todo):
            probe = _load(backend, probe_entry(macro, batch), seed)
            if "probe_baseline" not in table.meta:  # a resumed build keeps its first baseline
                table.meta["probe_baseline"] = probe_baseline(probe, protocol, rng).to_dict()
        for group in todo:
            if not group:
                continue
            bar.set_postfix_str(group[0].position or group[0].key)
            if backend.measures_latency:
                assert probe is not None
                runners = {e.key: _load(backend, e, seed) for e in group}
                try:
                    baseline = Stats.from_dict(table.meta["probe_baseline"]).median
                    result = measure_group(runners, probe, baseline, protocol, rng)
                finally:
                    for r in runners.values():
                        r.close()
                for e in group:
                    table.entries[e.key] = {**e.record(), "latency": result.stats[e.key].to_dict(),
                                            "probe_drift": round(result.drift, 4)}
            else:
                for e in group:
                    table.entries[e.key] = e.record()
            table.meta["updated"] = _now()
            table.meta["complete"] = len(table.entries) == total and not backend.measures_latency
            table.save(out)
            bar.update(len(group))
    finally:
        bar.close()
        if probe is not None:
            probe.close()
    if backend.measures_latency and "calibration" not in table.meta and protocol.calibration_architectures:
        from hwnas.profiling.validate import calibrate

        if progress:
            print(f"calibrating on {protocol.calibration_architectures} random architectures timed whole ...",
                  file=sys.stderr)
        table.meta["calibration"] = calibrate(table, backend, protocol, seed)
        table.meta["updated"] = _now()
        table.meta["complete"] = True
        table.save(out)
    elif not table.meta.get("complete"):  # nothing left to measure or calibrate
        table.meta["complete"] = True
        table.save(out)
    return table


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _progress(total: int, done: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="entry", desc="table", disable=not enabled, file=sys.stderr,
                dynamic_ncols=True)
