"""`hwnas validate`: the table's predictions against end-to-end measurements.

Random architectures of the table's space are built whole, exported and timed with the
table's backend and protocol (interleaved in small groups, with the table's drift probe);
the report compares measured and predicted latency.
"""

from __future__ import annotations

import math
import random
import statistics
import sys
from dataclasses import replace
from typing import Any

from hwnas.errors import HwnasError
from hwnas.model.network import build_network
from hwnas.profiling.backends import Backend, get_backend
from hwnas.profiling.entries import probe_entry
from hwnas.profiling.predict import predict
from hwnas.profiling.protocol import Protocol, Stats, measure_group, probe_baseline
from hwnas.profiling.table import Table
from hwnas.spaces.arch import Architecture
from hwnas.spaces.sampling import sample_architecture

GROUP = 4  # architectures timed interleaved at once (each holds a whole network in memory)
CALIBRATION_SEED = 1_000_003


def backend_for(table: Table) -> Backend:
    """The table's backend on this machine, refused if this is another device."""
    if not table.has_latency:
        raise HwnasError("the table holds no latency (backend 'none'); validate a profiled table")
    b = table.meta["backend"]
    backend = get_backend(b["name"], precision=table.meta["precision"], threads=b.get("threads"))
    here = backend.describe()["device"]
    if here != table.meta["device"]:
        raise HwnasError(f"the table was measured on {table.meta['device']}, this machine is {here}: "
                         f"measurements here cannot validate it; build a table on this device")
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
                          seed: int, progress: Any = None, drifts: list[float] | None = None) -> list[Stats]:
    """End-to-end latency of each architecture, in interleaved groups with the drift probe.

    When `drifts` is given it receives first this run's probe baseline over the table's, then
    each architecture's group probe ratio."""
    batch = int(table.meta["batch"])
    macro = archs[0].macro
    rng = random.Random(seed)
    probe_spec = probe_entry(macro, batch)
    probe = backend.load(probe_spec.build(), probe_spec.input_shapes)
    # The drift reference is this run's own probe baseline: networks compared with each other
    # must share one machine state. How that state compares with the table's build is reported
    # separately (`machine_vs_table`), not re-measured away.
    baseline = probe_baseline(probe, protocol, rng).median
    if drifts is not None:
        drifts.append(baseline / Stats.from_dict(table.meta["probe_baseline"]).median)
    out: list[Stats] = []
    try:
        for start in range(0, len(archs), GROUP):
            chunk = archs[start:start + GROUP]
            runners = {}
            for i, arch in enumerate(chunk):
                net = build_network(arch, seed=seed + start + i)
                runners[str(i)] = backend.load(net, [(batch, 3, macro.input, macro.input)])
            try:
                result = measure_group(runners, probe, baseline, protocol, rng)
            finally:
                for r in runners.values():
                    r.close()
            out.extend(result.stats[str(i)] for i in range(len(chunk)))
            if drifts is not None:
                drifts.extend([result.drift] * len(chunk))
            if progress is not None:
                progress.update(len(chunk))
    finally:
        probe.close()
    return out


def calibrate(table: Table, backend: Backend, protocol: Protocol, seed: int) -> dict[str, Any]:
    """Time random architectures whole; the factor that maps summed entries to whole networks.

    Its seed is disjoint from validate's (which samples from seeds near 0), so validation
    checks the calibrated table on architectures it was not fitted on.
    """
    space, macro = table.space(), table.macro()
    rng = random.Random(CALIBRATION_SEED + seed)
    n = protocol.calibration_architectures
    archs = [sample_architecture(space, macro, float(table.meta["scale"]), rng, name=f"calib{i}") for i in range(n)]
    summed = [predict(table, a)["latency_ms_uncalibrated"] for a in archs]
    stats = measure_architectures(archs, table, backend,
                                  replace(protocol, rounds=protocol.network_rounds,
                                          drift_tolerance=protocol.network_drift_tolerance),
                                  CALIBRATION_SEED + seed)
    ratios = [s.value(table.statistic) / p for s, p in zip(stats, summed)]
    return {"factor": round(statistics.median(ratios), 5), "architectures": n, "seed": CALIBRATION_SEED + seed,
            "ratios": [round(r, 5) for r in ratios]}


def validate(table: Table, samples: int, seed: int = 0, progress: bool = True,
             rounds: int | None = None, recalibrate: bool = False) -> dict[str, Any]:
    """Measured vs predicted latency of `samples` random architectures.

    recalibrate: first re-time the table's own calibration architectures (disjoint from the
    samples) and also report predictions with that factor (`recalibrated`): on a shared
    machine the whole-network/op-sum ratio moves with the machine's state, which the op probe
    does not see.
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
    calibration_now = None
    if recalibrate:
        if progress:
            print("re-timing the table's calibration architectures ...", file=sys.stderr)
        build_seed = int(table.meta.get("calibration", {}).get("seed", CALIBRATION_SEED)) - CALIBRATION_SEED
        calibration_now = calibrate(table, backend, Protocol.from_dict(table.meta["protocol"]), build_seed)
    from tqdm import tqdm

    with tqdm(total=samples, unit="arch", desc="validate", disable=not progress) as bar:
        drifts: list[float] = []
        stats = measure_architectures(archs, table, backend, protocol, seed, bar, drifts)
    machine_vs_table, drifts = drifts[0], drifts[1:]
    measured = [s.value(table.statistic) for s in stats]
    report: dict[str, Any] = metrics(predictions, measured)
    report["uncalibrated"] = metrics([p["latency_ms_uncalibrated"] for p in priced], measured)
    report["calibration_factor"] = table.calibration_factor
    if calibration_now is not None:
        report["calibration_now"] = calibration_now
        report["recalibrated"] = metrics([p["latency_ms_uncalibrated"] * calibration_now["factor"] for p in priced],
                                         measured)
    report["machine_vs_table"] = round(machine_vs_table, 4)  # probe now / probe when the table was built
    report.update({
        "seed": seed, "batch": table.meta["batch"], "statistic": table.statistic, "rounds": protocol.rounds,
        "samples": [{"cells": [list(c.ops) for c in a.cells], "predicted_ms": p["latency_ms"],
                     "predicted_uncalibrated_ms": p["latency_ms_uncalibrated"], "measured_ms": m,
                     "measured_cov": round(s.cov, 5), "probe_drift": round(d, 4), "flags": list(s.flags)}
                    for a, p, m, s, d in zip(archs, priced, measured, stats, drifts)],
    })
    return report


def plot(report: dict[str, Any], path: str) -> None:
    from hwnas.errors import require

    require("matplotlib", "plot", "--plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred = [s["predicted_ms"] for s in report["samples"]]
    meas = [s["measured_ms"] for s in report["samples"]]
    lo, hi = min(pred + meas) * 0.9, max(pred + meas) * 1.1
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="ideal")
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="0.9", label="±10%")
    ax.scatter(meas, pred, s=14)
    ax.set_xlabel("measured latency (ms / batch)")
    ax.set_ylabel("predicted latency (ms / batch)")
    ax.set_title(f"n={report['n']}  within ±10%: {report['within_10pct']:.0%}  "
                 f"Spearman {report['spearman']:.3f}", fontsize=9)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

