"""`hwnas validate`: the table's predictions against end-to-end measurements.

Random architectures of the table's space are built whole, exported and timed with the
table's backend and protocol (interleaved in small groups, with the table's drift probe and a
reference network that refers every group to one machine state); the report compares
measured and predicted latency.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from hwnas.errors import HwnasError
from hwnas.model.network import build_network
from hwnas.profiling.backends import Backend, get_backend
from hwnas.profiling.entries import probe_entry
from hwnas.profiling.predict import predict
from hwnas.profiling.protocol import Protocol, Stats, measure_group, probe_baseline, refer_groups
from hwnas.profiling.table import Table
from hwnas.progress import progress_bar
from hwnas.spaces.arch import Architecture
from hwnas.spaces.sampling import sample_architecture, slot_architecture

GROUP = 4  # architectures timed interleaved at once (each holds a whole network in memory)
REFERENCE = "__reference__"
CALIBRATION_SEED = 1_000_003
DEFAULT_SAMPLES = 20  # random architectures validated (the API's and the CLI's default)


def backend_for(table: Table, purpose: str = "validate") -> Backend:
    """The table's backend on the current device, refused if it is another device."""
    if not table.has_latency:
        raise HwnasError(f"the table holds no latency (backend 'none'); {purpose} a profiled table")
    b = table.meta["backend"]
    backend = get_backend(b["name"], precision=table.meta["precision"], threads=b.get("threads"))
    here = backend.describe()["device"]
    if here != table.meta["device"]:
        raise HwnasError(f"the table was measured on {table.meta['device']}, the current device is {here}: "
                         f"its measurements cannot {purpose} it; build a table on this device")
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


def measure_architectures(archs: list[Architecture], table: Table, backend: Backend, protocol: Protocol,
                          seed: int, progress: str | None = None, drifts: list[float] | None = None,
                          reference: tuple[Architecture, int] | None = None,
                          reference_ms: list[float] | None = None) -> list[Stats]:
    """End-to-end latency of each architecture, in interleaved groups with the drift probe.

    `progress` names a progress bar (tqdm, on stderr) counted in interleaved rounds, with the
    time left. When `drifts` is given it receives first this run's probe baseline over the
    table's, then each architecture's group probe ratio. With `reference`, that network is timed
    in every group too (an architecture and its weights' seed), interleaved with the group's
    architectures, and `reference_ms` receives its latency once per group."""
    batch = int(table.meta["batch"])
    macro = archs[0].macro
    rng = random.Random(seed)
    groups = range(0, len(archs), GROUP)
    bar = progress_bar(len(groups) * protocol.rounds, progress or "", "round", progress is not None)
    probe_spec = probe_entry(macro, batch)
    probe = backend.load(probe_spec.build(), probe_spec.input_shapes)
    # The drift reference is this run's own probe baseline: networks compared with each other
    # must share one machine state. How that state compares with the table's build is reported
    # separately (`machine_vs_table`), not re-measured away.
    baseline = probe_baseline(probe, protocol, rng).median
    if drifts is not None:
        drifts.append(baseline / Stats.from_dict(table.meta["probe_baseline"]).median)
    input_shape = [(batch, 3, macro.input, macro.input)]
    ref = backend.load(build_network(reference[0], seed=reference[1]), input_shape) if reference else None
    out: list[Stats] = []
    try:
        for group, start in enumerate(groups):
            chunk = archs[start:start + GROUP]
            bar.set_postfix_str(f"architectures {start + 1}-{start + len(chunk)} of {len(archs)}")
            runners = {}
            for i, arch in enumerate(chunk):
                net = build_network(arch, seed=seed + start + i)
                runners[str(i)] = backend.load(net, input_shape)

            def tick(group_end: int = (group + 1) * protocol.rounds) -> None:
                if bar.n < group_end:  # re-measured rounds and groups add no progress
                    bar.update(1)

            try:
                result = measure_group({**runners, REFERENCE: ref} if ref else runners, probe, baseline, protocol,
                                       rng, tick)
            finally:
                for r in runners.values():
                    r.close()
            bar.update((group + 1) * protocol.rounds - bar.n)
            out.extend(result.stats[str(i)] for i in range(len(chunk)))
            if drifts is not None:
                drifts.extend([result.drift] * len(chunk))
            if ref is not None and reference_ms is not None:
                reference_ms.append(result.stats[REFERENCE].value(table.statistic))
    finally:
        bar.close()
        probe.close()
        if ref is not None:
            ref.close()
    return out


def branches_per_cell(arch: Architecture) -> float:
    """The mean number of selected branches per cell slot (empty normal cells count 0)."""
    return sum(len(c.ops) for c in arch.placed) / len(arch.placed)


def calibration_architectures(table: Table, seed: int, protocol: Protocol) -> list[Architecture]:
    """The random architectures `calibrate` times whole for a new table (the same ones for the same
    seed), from the densest to the sparsest: architecture i draws every branch with probability
    b_i / (ops in the space), b_i evenly spaced from protocol.calibration_max_branches down to
    calibration_min_branches. Architecture i's weights are seeded CALIBRATION_SEED + seed + i."""
    space, macro, scale = table.space(), table.macro(), float(table.meta["scale"])
    rng = random.Random(CALIBRATION_SEED + seed)
    n, hi, lo = protocol.calibration_architectures, protocol.calibration_max_branches, protocol.calibration_min_branches
    targets = [hi - (hi - lo) * i / max(n - 1, 1) for i in range(n)]
    return [sample_architecture(space, macro, scale, rng, p=min(1.0, b / len(space.ops)), name=f"calib{i}")
            for i, b in enumerate(targets)]


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


def reference_network(table: Table) -> tuple[Architecture, int]:
    """The table's first (densest) calibration architecture and its weights' seed, as `calibrate` timed it."""
    return calibrated_architectures(table)[0], int(table.meta["calibration"]["seed"])


def calibrate(table: Table, backend: Backend, protocol: Protocol, seed: int,
              archs: list[Architecture] | None = None, progress: str | None = None) -> dict[str, Any]:
    """Time random architectures whole; the factor that maps summed entries to whole networks.

    The architectures (by default `calibration_architectures`) span densities from sparse to
    mid; each one's ratio measured / summed is kept with its mean branches per cell, and their
    spread ((max - min) / median) is checked against protocol.calibration_tolerance
    (`consistent`): the factor must not depend on density. Its seed is disjoint from
    validate's (which samples from seeds near 0), so validation checks the calibrated table on
    architectures it was not fitted on.
    """
    archs = archs if archs is not None else calibration_architectures(table, seed, protocol)
    summed = [predict(table, a)["latency_ms_uncalibrated"] for a in archs]
    stats = measure_architectures(archs, table, backend,
                                  replace(protocol, rounds=protocol.network_rounds,
                                          drift_tolerance=protocol.network_drift_tolerance),
                                  CALIBRATION_SEED + seed, progress)
    ratios = [s.value(table.statistic) / p for s, p in zip(stats, summed)]
    factor = statistics.median(ratios)
    spread = (max(ratios) - min(ratios)) / factor
    return {"factor": round(factor, 5), "architectures": len(archs), "seed": CALIBRATION_SEED + seed,
            "ratios": [round(r, 5) for r in ratios],
            "branches_per_cell": [round(branches_per_cell(a), 3) for a in archs],
            "spread": round(spread, 5), "tolerance": protocol.calibration_tolerance,
            "consistent": spread <= protocol.calibration_tolerance,
            "cells": [[list(c.ops) for c in a.placed] for a in archs]}


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
             rounds: int | None = None, recalibrate: bool = False, reference: bool | None = None) -> dict[str, Any]:
    """Measured vs predicted latency of `samples` random architectures.

    Samples are timed in groups of GROUP, each group a few minutes long. On a shared machine
    the speed of whole networks moves between groups by several percent (the op probe does not
    see it), which scrambles their ranks. So by default (`reference`, when the table has a
    calibration) the build's first (densest) calibration architecture, a random network of the same
    space, is timed in every group, interleaved with the samples, and each group's latencies
    are referred to one machine state: multiplied by the reference's median over the run /
    its latency in that group (the rule for noisy machines: ratios to a baseline timed
    in the same run; docs/protocol.md). `measured_ms` is that referred latency; `raw_ms` and the `raw`
    metrics keep the latencies as timed. The table's prediction is never adjusted.
    recalibrate: first re-time the table's calibration architectures (disjoint from the
    samples) and also report predictions with that factor (`recalibrated`).
    """
    if samples < 2:
        raise HwnasError("--samples must be at least 2 (Spearman's rank correlation needs two points)")
    backend = backend_for(table)
    space, macro = table.space(), table.macro()
    scale = float(table.meta["scale"])
    rng = random.Random(seed)
    archs = [sample_architecture(space, macro, scale, rng, name=f"sample{i}") for i in range(samples)]
    priced = [predict(table, a) for a in archs]
    predictions = [p["latency_ms"] for p in priced]
    protocol = Protocol.from_dict(table.meta["protocol"])
    protocol = replace(protocol, rounds=rounds or protocol.network_rounds,
                       drift_tolerance=protocol.network_drift_tolerance)
    calibration = table.meta.get("calibration")
    if (recalibrate or reference) and not calibration:
        raise HwnasError("the table has no calibration (built with calibration_architectures = 0): "
                         "--recalibrate and the reference network re-time its calibration architectures; "
                         "validate it with --no-reference")
    if reference is None:
        reference = bool(calibration)
    build_seed = int(calibration["seed"]) - CALIBRATION_SEED if calibration else 0
    calibration_now = None
    if recalibrate:
        calibration_now = calibrate(table, backend, Protocol.from_dict(table.meta["protocol"]), build_seed,
                                    calibrated_architectures(table), "recalibrate" if progress else None)
    ref = reference_network(table) if reference else None
    reference_ms: list[float] = []
    drifts: list[float] = []
    stats = measure_architectures(archs, table, backend, protocol, seed, "validate" if progress else None, drifts,
                                  ref, reference_ms)
    machine_vs_table, drifts = drifts[0], drifts[1:]
    raw = [s.value(table.statistic) for s in stats]
    factors = refer_groups([i // GROUP for i in range(samples)], reference_ms) if ref is not None else [1.0] * samples
    measured = [m * f for m, f in zip(raw, factors)]
    report: dict[str, Any] = metrics(predictions, measured)
    report["measured"] = "referred" if ref is not None else "raw"
    report["uncalibrated"] = metrics([p["latency_ms_uncalibrated"] for p in priced], measured)
    report["calibration_factor"] = table.calibration_factor
    if calibration_now is not None:
        report["calibration_now"] = calibration_now
        report["recalibrated"] = metrics([p["latency_ms_uncalibrated"] * calibration_now["factor"] for p in priced],
                                         measured)
    if ref is not None:
        assert calibration is not None
        report["raw"] = metrics(predictions, raw)
        summed = predict(table, ref[0])["latency_ms_uncalibrated"]
        build_ms = float(calibration["ratios"][0]) * summed  # its measured latency at the build
        report["reference"] = {
            "cells": [list(c.ops) for c in ref[0].cells], "summed_ms": summed, "build_ms": round(build_ms, 6),
            "measured_ms": reference_ms, "level_ms": statistics.median(reference_ms),
            "vs_build": [round(m / build_ms, 4) for m in reference_ms],
        }
    report["machine_vs_table"] = round(machine_vs_table, 4)  # probe now / probe when the table was built
    report.update({
        "seed": seed, "batch": table.meta["batch"], "statistic": table.statistic, "rounds": protocol.rounds,
        "samples": [{"cells": [list(c.ops) for c in a.cells], "predicted_ms": p["latency_ms"],
                     "predicted_uncalibrated_ms": p["latency_ms_uncalibrated"], "measured_ms": m, "raw_ms": r,
                     "measured_cov": round(s.cov, 5), "probe_drift": round(d, 4), "flags": list(s.flags)}
                    | ({"group_factor": round(f, 5)} if ref is not None else {})
                    for a, p, m, r, s, d, f in zip(archs, priced, measured, raw, stats, drifts, factors)],
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

