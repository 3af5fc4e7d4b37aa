"""`hwnas validate`: the table's predictions against end-to-end measurements.

Random architectures of the table's space are built whole, exported and timed with the
table's backend and protocol, interleaved in small groups with the table's reference network in
every round; each one's latency is its median ratio to the reference times the table's reference
level, i.e. referred to the machine state the table was built in (as timed: `raw_ms`). The
report compares those latencies with the table's predictions. The build's calibration times its
networks the same way (`calibrate`).
"""

from __future__ import annotations

import contextlib
import math
import random
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hwnas.errors import HwnasError
from hwnas.model.network import build_network
from hwnas.profiling.backends import Backend, get_backend
from hwnas.profiling.predict import predict
from hwnas.profiling.protocol import (Protocol, Runner, Stats, measure_interleaved, measure_referred,
                                     measure_referred_to_precision, median_uncertainty)
from hwnas.profiling.reference import loaded, reference_of
from hwnas.profiling.table import Table
from hwnas.progress import progress_bar
from hwnas.spaces.arch import Architecture, Space
from hwnas.spaces.macro import Macro
from hwnas.spaces.sampling import sample_architecture, slot_architecture

GROUP = 4  # architectures timed interleaved at once (each holds a whole network in memory)
CALIBRATION_SEED = 1_000_003
DEFAULT_SAMPLES = 20  # random architectures validated (the API's and the CLI's default)


def backend_for(table: Table, purpose: str = "validate", why: str | None = None) -> Backend:
    """The table's backend on the current device, refused if it is another device (`why` ends the
    refusal; by default: its measurements cannot `purpose` it)."""
    if not table.has_latency:
        raise HwnasError(f"the table holds no latency (backend 'none'); {purpose} a profiled table")
    b = table.meta["backend"]
    backend = get_backend(b["name"], precision=table.meta["precision"], threads=b.get("threads"))
    here = backend.describe()["device"]
    if here != table.meta["device"]:
        raise HwnasError(f"the table was measured on {table.meta['device']}, the current device is {here}: "
                         + (why or f"its measurements cannot {purpose} it; build a table on this device"))
    return backend


def spearman(xs: list[float], ys: list[float]) -> float:
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        i = 0
        while i < len(order):  # average ranks of ties
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / den if den else float("nan")


def metrics(predicted: list[float], measured: list[float]) -> dict[str, float]:
    rel = [abs(p - m) / m for p, m in zip(predicted, measured)]
    return {
        "n": len(measured),
        "within_10pct": sum(r <= 0.1 for r in rel) / len(rel),
        "mape": sum(rel) / len(rel),
        "rmse_ms": math.sqrt(sum((p - m) ** 2 for p, m in zip(predicted, measured)) / len(measured)),
        "spearman": spearman(predicted, measured),
        "mean_signed_error": sum((p - m) / m for p, m in zip(predicted, measured)) / len(measured),
    }


@dataclass(frozen=True)
class Timed:
    """Whole networks timed interleaved with the reference: each one's times as timed and its
    ratios to the reference (None without a reference), and the reference's times in each group."""

    timed: list[Stats]
    ratios: list[Stats] | None
    reference: list[Stats]


def _network_runners(archs: list[Architecture], backend: Backend, batch: int, seed: int) -> dict[str, Runner]:
    """Architecture i of the list, weights seeded seed + i, loaded under the key str(i)."""
    shape = [(batch, 3, archs[0].macro.input, archs[0].macro.input)]
    return {str(i): backend.load(build_network(a, seed=seed + i), shape) for i, a in enumerate(archs)}


def measure_architectures(archs: list[Architecture], table: Table, backend: Backend, protocol: Protocol,
                          seed: int, progress: str | None = None, reference: bool = True) -> Timed:
    """End-to-end latency of each architecture, timed in interleaved groups of GROUP with the
    table's reference in every round (unless `reference` is False: as timed only).

    `progress` names a progress bar (tqdm, on stderr) counted in interleaved rounds, with the
    time left. Architecture i's weights are seeded seed + i."""
    batch = int(table.meta["batch"])
    rng = random.Random(seed)
    groups = range(0, len(archs), GROUP)
    bar = progress_bar(len(groups) * protocol.rounds, progress or "", "round", progress is not None)
    timed: list[Stats] = []
    ratios: list[Stats] = []
    reference_ms: list[Stats] = []
    spec = reference_of(table).spec if reference else None
    with loaded(backend, spec) if spec else contextlib.nullcontext() as ref, bar:
        for group, start in enumerate(groups):
            chunk = archs[start:start + GROUP]
            bar.set_postfix_str(f"architectures {start + 1}-{start + len(chunk)} of {len(archs)}")
            runners = {str(start + int(k)): r for k, r in _network_runners(chunk, backend, batch, seed + start).items()}

            def tick(group_end: int = (group + 1) * protocol.rounds) -> None:
                if bar.n < group_end:  # re-measured rounds add no progress
                    bar.update(1)

            try:
                if ref is None:
                    stats = measure_interleaved(runners, protocol, rng, tick)
                    timed.extend(stats[k] for k in runners)
                else:
                    result = measure_referred(runners, ref, protocol, rng, tick)
                    timed.extend(result.timed[k] for k in runners)
                    ratios.extend(result.ratios[k] for k in runners)
                    reference_ms.append(result.reference)
            finally:
                for r in runners.values():
                    r.close()
            bar.update((group + 1) * protocol.rounds - bar.n)
    return Timed(timed, ratios if reference else None, reference_ms)


def branches_per_cell(arch: Architecture) -> float:
    """The mean number of selected branches per cell slot (empty normal cells count 0)."""
    return sum(len(c.ops) for c in arch.placed) / len(arch.placed)


def density_architectures(space: Space, macro: Macro, scale: float, rng: random.Random, count: int,
                          most: float, fewest: float, prefix: str) -> list[Architecture]:
    """Random architectures from the densest to the sparsest: architecture i draws every branch with
    probability b_i / (ops in the space), b_i evenly spaced from `most` down to `fewest`."""
    targets = [most - (most - fewest) * i / max(count - 1, 1) for i in range(count)]
    return [sample_architecture(space, macro, scale, rng, p=min(1.0, b / len(space.ops)), name=f"{prefix}{i}")
            for i, b in enumerate(targets)]


def calibration_architectures(table: Table, seed: int, protocol: Protocol) -> list[Architecture]:
    """The random architectures `calibrate` times whole for a new table (the same ones for the same
    seed), from protocol.calibration_max_branches down to calibration_min_branches per cell
    (density_architectures). Architecture i's weights are seeded CALIBRATION_SEED + seed + i."""
    return density_architectures(table.space(), table.macro(), float(table.meta["scale"]),
                                 random.Random(CALIBRATION_SEED + seed), protocol.calibration_architectures,
                                 protocol.calibration_max_branches, protocol.calibration_min_branches, "calib")


def calibrated_architectures(table: Table) -> list[Architecture]:
    """The architectures the table was calibrated on, as its calibration lists them (a calibration
    that lists no cells drew every branch with probability 0.5, from its seed)."""
    calibration = table.meta["calibration"]
    space, macro, scale = table.space(), table.macro(), float(table.meta["scale"])
    if "cells" in calibration:
        return [slot_architecture(space, macro, scale, ops, f"calib{i}") for i, ops in enumerate(calibration["cells"])]
    rng = random.Random(int(calibration["seed"]))
    return [sample_architecture(space, macro, scale, rng, name=f"calib{i}")
            for i in range(int(calibration["architectures"]))]


def calibrate(table: Table, backend: Backend, protocol: Protocol, seed: int,
              archs: list[Architecture] | None = None, progress: str | None = None,
              reference: Runner | None = None) -> dict[str, Any]:
    """Time random architectures whole; the factor that maps summed entries to whole networks.

    The architectures (by default `calibration_architectures`) span densities from sparse to
    mid. They are timed in one group with the table's reference in every round (`reference`: the
    build's runner of it, else it is loaded), until each one's ratio to the reference is known to
    protocol.calibration_precision (at most calibration_max_rounds rounds), and referred to the
    table's reference level, the machine state of its entries. Each one's ratio measured / summed
    is kept with its mean branches per cell, and their spread ((max - min) / median) is checked
    against protocol.calibration_tolerance (`consistent`): the factor must not depend on density.
    What it cost (rounds, seconds) is recorded. Its seed is disjoint from validate's (which
    samples from seeds near 0), so validation checks the calibrated table on architectures it was
    not fitted on.
    """
    start = time.monotonic()
    archs = archs if archs is not None else calibration_architectures(table, seed, protocol)
    summed = [predict(table, a)["latency_ms_uncalibrated"] for a in archs]
    ref = reference_of(table)
    rounds = max(protocol.calibration_max_rounds, protocol.network_rounds)
    bar = progress_bar(rounds, progress or "", "round", progress is not None)
    with loaded(backend, ref.spec) if reference is None else contextlib.nullcontext(reference) as runner, bar:
        bar.set_postfix_str(f"loading {len(archs)} networks")
        runners = _network_runners(archs, backend, int(table.meta["batch"]), CALIBRATION_SEED + seed)
        bar.set_postfix_str(f"{len(archs)} networks")
        try:
            result = measure_referred_to_precision(runners, runner, protocol, random.Random(CALIBRATION_SEED + seed),
                                                   protocol.calibration_precision, rounds, lambda: bar.update(1),
                                                   protocol.network_rounds)
        finally:
            for r in runners.values():
                r.close()
        bar.total = bar.n  # the rounds the precision needed
        bar.refresh()
    stats = [result.ratios[str(i)] for i in range(len(archs))]
    ratios = [s.value(table.statistic) * ref.level_ms / p for s, p in zip(stats, summed)]
    factor = statistics.median(ratios)
    spread = (max(ratios) - min(ratios)) / factor
    return {"factor": round(factor, 5), "architectures": len(archs), "seed": CALIBRATION_SEED + seed,
            "ratios": [round(r, 5) for r in ratios],
            "branches_per_cell": [round(branches_per_cell(a), 3) for a in archs],
            "spread": round(spread, 5), "tolerance": protocol.calibration_tolerance,
            "consistent": spread <= protocol.calibration_tolerance,
            "cells": [[list(c.ops) for c in a.placed] for a in archs],
            "rounds": result.reference.count, "seconds": round(time.monotonic() - start, 1),
            "precision": round(max(median_uncertainty(s) for s in stats), 5),
            "reference_vs_level": round(result.reference.median / ref.level_ms, 4)}


def calibration_warning(calibration: dict[str, Any]) -> str | None:
    """A one-line warning when the calibration ratios disagree across densities, else None."""
    if calibration.get("consistent", True):
        return None
    pairs = ", ".join(f"{r} at {b} branches/cell" for r, b in zip(calibration["ratios"],
                                                                  calibration["branches_per_cell"]))
    return (f"the calibration ratios (measured / summed) disagree by {calibration['spread']:.1%} (> "
            f"{calibration['tolerance']:.0%}) across densities: {pairs}; the machine was busy during the "
            f"calibration, or the combination model misses something on this device: check the table with "
            f"'hwnas validate'")


def validate(table: Table, samples: int = DEFAULT_SAMPLES, seed: int = 0, progress: bool = True,
             rounds: int | None = None, recalibrate: bool = False, reference: bool = True,
             branches: tuple[float, float] | None = None) -> dict[str, Any]:
    """Measured vs predicted latency of `samples` random architectures.

    The samples draw every branch with probability 0.5 (supernet density), or with `branches`
    (fewest, most) their mean branches per cell evenly spaced from most down to fewest, as the
    calibration's are (sparse networks, as searches end with; seeds near `seed`, disjoint from the
    calibration's). They are timed in groups of GROUP with the table's reference in every round,
    and referred to the table's machine state: `measured_ms` is each one's median ratio to the
    reference times the table's reference level (the rule for noisy machines: ratios to a baseline
    timed in the same rounds; docs/protocol.md); `raw_ms` and the `raw` metrics keep the latencies
    as timed, and `reference.vs_table` says how the machine ran against the build meanwhile.
    `reference=False` times the samples alone (as timed only). The table's prediction is never
    adjusted. recalibrate: first re-time the table's calibration architectures (disjoint from the
    samples) and also report predictions with that factor (`recalibrated`).
    """
    if samples < 2:
        raise HwnasError("--samples must be at least 2 (Spearman's rank correlation needs two points)")
    backend = backend_for(table)
    space, macro = table.space(), table.macro()
    scale = float(table.meta["scale"])
    rng = random.Random(seed)
    if branches is None:
        archs = [sample_architecture(space, macro, scale, rng, name=f"sample{i}") for i in range(samples)]
    else:
        fewest, most = branches
        if not 0 < fewest <= most <= len(space.ops):
            raise HwnasError(f"--branches {fewest:g}-{most:g}: give the fewest and the most branches per cell, "
                             f"0 < FEWEST <= MOST <= {len(space.ops)} (the ops of {space.name})")
        archs = density_architectures(space, macro, scale, rng, samples, most, fewest, "sample")
    priced = [predict(table, a) for a in archs]
    predictions = [p["latency_ms"] for p in priced]
    build_protocol = Protocol.from_dict(table.meta["protocol"])
    protocol = replace(build_protocol, rounds=rounds or build_protocol.network_rounds)
    calibration = table.meta.get("calibration")
    if recalibrate and not calibration:
        raise HwnasError("the table has no calibration (built with calibration_architectures = 0): "
                         "--recalibrate re-times its calibration architectures")
    ref = reference_of(table) if reference else None
    calibration_now = None
    if recalibrate:
        assert calibration is not None
        build_seed = int(calibration["seed"]) - CALIBRATION_SEED
        calibration_now = calibrate(table, backend, build_protocol, build_seed, calibrated_architectures(table),
                                    "recalibrate" if progress else None)
    timed = measure_architectures(archs, table, backend, protocol, seed, "validate" if progress else None,
                                  reference=ref is not None)
    raw = [s.value(table.statistic) for s in timed.timed]
    if ref is not None:
        assert timed.ratios is not None
        measured = [r.value(table.statistic) * ref.level_ms for r in timed.ratios]
    else:
        measured = raw
    report: dict[str, Any] = metrics(predictions, measured)
    report["measured"] = "referred" if ref is not None else "raw"
    report["uncalibrated"] = metrics([p["latency_ms_uncalibrated"] for p in priced], measured)
    report["calibration_factor"] = table.calibration_factor
    if calibration_now is not None:
        report["calibration_now"] = calibration_now
        report["recalibrated"] = metrics([p["latency_ms_uncalibrated"] * calibration_now["factor"] for p in priced],
                                         measured)
    if ref is not None:
        report["raw"] = metrics(predictions, raw)
        groups = [s.median for s in timed.reference]
        report["reference"] = {"graph": ref.description, "level_ms": ref.level_ms, "groups_ms": groups,
                               "vs_table": [round(g / ref.level_ms, 4) for g in groups],
                               "build_range": list(ref.build_range) if ref.build_range else None}
        report["machine_vs_table"] = round(statistics.median(groups) / ref.level_ms, 4)
    ratios: list[Stats | None] = list(timed.ratios) if timed.ratios else [None] * len(archs)
    report.update({
        "seed": seed, "batch": table.meta["batch"], "statistic": table.statistic, "rounds": protocol.rounds,
        "branches": list(branches) if branches else None,
        "samples": [{"cells": [list(c.ops) for c in a.cells], "branches_per_cell": round(branches_per_cell(a), 3),
                     "predicted_ms": p["latency_ms"], "predicted_uncalibrated_ms": p["latency_ms_uncalibrated"],
                     "measured_ms": m, "raw_ms": r, "spread": round((q or s).spread, 5), "flags": list((q or s).flags)}
                    | ({"ratio": q.value(table.statistic)} if q else {})
                    for a, p, m, r, s, q in zip(archs, priced, measured, raw, timed.timed, ratios)],
    })
    return report


def plot_format(path: str) -> str:
    """The image format a plot path asks for (its suffix; png without one), or a one-line refusal."""
    from hwnas.errors import require

    require("matplotlib", "plot", "--plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fmt = Path(path).suffix[1:].lower() or "png"
    supported = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if fmt not in supported:
        raise HwnasError(f"--plot {path}: cannot write .{fmt} images; use one of "
                         + ", ".join(f".{k}" for k in sorted(supported)))
    return fmt


def plot(report: dict[str, Any], path: str) -> None:
    from hwnas.files import atomic_path

    fmt = plot_format(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred = [s["predicted_ms"] for s in report["samples"]]
    meas = [s["measured_ms"] for s in report["samples"]]
    raw = [s.get("raw_ms", m) for s, m in zip(report["samples"], meas)]  # reports before raw_ms: as timed
    referred = report.get("measured") == "referred"
    lo, hi = min(pred + meas + raw) * 0.9, max(pred + meas + raw) * 1.1
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="ideal")
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="0.9", label="±10%")
    ax.scatter(meas, pred, s=14, label="referred to one machine state" if referred else "measured")
    if referred:
        ax.scatter(raw, pred, s=14, facecolors="none", edgecolors="C1", label="as timed in its group")
    ax.set_xlabel("measured latency (ms / batch)")
    ax.set_ylabel("predicted latency (ms / batch)")
    ax.set_title(f"n={report['n']}  within ±10%: {report['within_10pct']:.0%}  "
                 f"Spearman {report['spearman']:.3f}", fontsize=9)
    ax.legend(loc="upper left")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:  # whole or not at all; the suffix (format) is kept
            fig.savefig(tmp, dpi=120, format=fmt)
    finally:
        plt.close(fig)

