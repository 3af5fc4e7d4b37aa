"""Table transfer against a full build on the same target, in the same run, for three pairs:

  shipped   latency_tables/latency19_ort-cpu_b16.json (a 2-core Intel Xeon, ort 1 thread)
            -> the machine running the benchmark, ort 1 thread
  threads   a full ort 1-thread table built in the run -> ort 2 threads
  torch     the same ort 1-thread table -> the torch backend (1 thread)

For each pair: the transfer ('hwnas table transfer') and a full build ('hwnas table build') of the
target, both timed in the run; then whole random networks timed on the target ('hwnas validate' on the
transferred table) and both tables' predictions compared with them. Reported per pair:
  - entries measured (count and share of the table);
  - entry-wise error of the transferred entries against the full build's (MAPE, within +-10%), as
    ratios to the reference network both tables time;
  - networks: within +-10%, MAPE, Spearman, for the transferred table and the full build's, each
    against the networks referred to its own table's machine state (validate's ratios to the
    reference times the table's level);
  - Spearman inside a band of +-7% of predicted latency around the sample's median prediction
    (the decisions a latency constraint makes), for both tables;
  - the transfer's time against the full build's.
Targets (benchmarks, reported not enforced): at most 10% of the entries measured, at least 95% of
the validated networks within +-10%, Spearman at least 0.9 in the band, time at most 25% of the
full build's.

    PYTHONPATH=. python benchmarks/bench_transfer.py --out bench_transfer [--pairs shipped,threads,torch]
        [--samples 60] [--branches 1-3] [--budget 0.1] [--seed 0] [--json]

The tables are kept in OUT (a killed run continues where it stopped: a finished table is reused,
its time then reported as not measured in this run); OUT/report.json is rewritten after every pair.
Keep the machine otherwise idle: every figure is a ratio within this run, and entries and networks
are referred through the reference network, but bursts of load make the builds re-measure entries
and the networks' ranks noisy. A quick check of the script itself, on
the tiny test space (the shipped pair needs latency19):

    PYTHONPATH=. python benchmarks/bench_transfer.py --out /tmp/bt --pairs threads,torch \\
        --space tests/data/tiny.json --macro tests/data/tiny.json --batch 2 --budget 0.3 --samples 4 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from hwnas.cli.table_cmd import branch_range  # the --branches of 'hwnas validate'

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "latency_tables" / "latency19_ort-cpu_b16.json"
PAIRS = {  # name: (source table, target backend and threads)
    "shipped": ("shipped", ("ort", 1)),
    "threads": ("ort1", ("ort", 2)),
    "torch": ("ort1", ("torch", 1)),
}
FULL = {"ort1": ("ort", 1), "ort2": ("ort", 2), "torch1": ("torch", 1)}
TARGETS = {"measured_share": 0.10, "within_10pct": 0.95, "band_spearman": 0.9, "time_ratio": 0.25}
BAND = 0.07


def full_name(backend: str, threads: int) -> str:
    return next(name for name, spec in FULL.items() if spec == (backend, threads))


def build_full(name: str, args: argparse.Namespace, protocol: Any, times: dict[str, float | None]) -> Any:
    """The full build of one target, timed (None when an earlier run's table is reused)."""
    from hwnas.profiling.backends import get_backend
    from hwnas.profiling.build import build_table
    from hwnas.profiling.table import Table
    from hwnas.spaces import resolve_macro, resolve_space

    path = args.out / f"full_{name}.json"
    if path.exists() and Table.load(path).meta.get("complete"):
        times.setdefault(name, None)
        return Table.load(path)
    backend, threads = FULL[name]
    print(f"== full build: {name}", flush=True)
    resumed, start = path.exists(), time.monotonic()
    table = build_table(resolve_space(args.space), resolve_macro(args.macro), 1.0,
                        get_backend(backend, threads=threads), args.batch, path, resume=resumed,
                        protocol=protocol, seed=args.seed)
    times[name] = None if resumed else time.monotonic() - start
    return table


def band_spearman(predicted: list[float], measured: list[float]) -> tuple[float | None, int]:
    from hwnas.profiling.validate import spearman

    centre = statistics.median(predicted)
    inside = [(p, m) for p, m in zip(predicted, measured) if abs(p / centre - 1) <= BAND]
    if len(inside) < 4:
        return None, len(inside)
    return spearman([p for p, _ in inside], [m for _, m in inside]), len(inside)


def network_metrics(predicted: list[float], measured: list[float]) -> dict[str, Any]:
    from hwnas.profiling.validate import metrics

    m = metrics(predicted, measured)
    band, n = band_spearman(predicted, measured)
    return {k: round(m[k], 4) for k in ("within_10pct", "mape", "spearman")} | {
        "band_spearman": None if band is None else round(band, 4), "band_n": n}


def entry_errors(transferred: Any, full: Any) -> dict[str, Any]:
    """The transferred entries against the full build's, as ratios to the reference network both
    tables timed (the same graph): the machine's state during each build cancels."""
    errors: list[float] = []
    by_family: dict[str, list[float]] = {}
    for key in transferred.transferred:
        e = transferred.ratio(key) / full.ratio(key) - 1
        errors.append(abs(e))
        by_family.setdefault(transferred.entries[key]["transfer"]["family"], []).append(abs(e))
    z = [abs(transferred.ratio(k) / full.ratio(k) - 1) / max(transferred.entries[k]["transfer"]["uncertainty"], 1e-9)
         for k in transferred.transferred]
    return {"n": len(errors), "mape": round(statistics.fmean(errors), 4),
            "within_10pct": round(sum(e <= 0.1 for e in errors) / len(errors), 4), "max": round(max(errors), 4),
            "within_2_sd": round(sum(v <= 2 for v in z) / len(z), 4),
            "by_family": {f: round(statistics.fmean(v), 4) for f, v in by_family.items()}}


def run_pair(name: str, args: argparse.Namespace, protocol: Any, times: dict[str, float | None]) -> dict[str, Any]:
    from hwnas.profiling.backends import get_backend
    from hwnas.profiling.predict import predict
    from hwnas.profiling.reference import reference_of
    from hwnas.profiling.table import Table
    from hwnas.profiling.transfer import transfer_table
    from hwnas.profiling.validate import validate
    from hwnas.spaces.sampling import slot_architecture

    source_name, (backend, threads) = PAIRS[name]
    if source_name == "shipped":
        source_path = SHIPPED
    else:
        build_full(source_name, args, protocol, times)
        source_path = args.out / f"full_{source_name}.json"
    source = Table.load(source_path)
    path = args.out / f"transfer_{name}.json"
    timed = not path.exists()
    print(f"== transfer: {name} ({source_path.name} -> {backend}, {threads} thread{'s' if threads > 1 else ''})",
          flush=True)
    start = time.monotonic()
    new = transfer_table(source, str(source_path), get_backend(backend, threads=threads), path, args.budget, protocol,
                         args.seed, resume=not timed)
    transfer_s = time.monotonic() - start if timed else None
    full = build_full(full_name(backend, threads), args, protocol, times)
    full_s = times[full_name(backend, threads)]
    print(f"== validate: {name}", flush=True)
    report = validate(new, args.samples, args.seed, branches=args.branches)
    measured = [s["measured_ms"] for s in report["samples"]]
    # the same networks referred to the full build's machine state: their ratios to the reference
    # network (the same graph in both tables) times the full build's level
    assert new.meta["reference"] == full.meta["reference"]
    measured_full = [s["ratio"] * reference_of(full).level_ms for s in report["samples"]]
    # the same networks validate timed, priced by the full build's table
    archs = [slot_architecture(new.space(), new.macro(), float(new.meta["scale"]), s["cells"], f"sample{i}")
             for i, s in enumerate(report["samples"])]
    result: dict[str, Any] = {
        "source": source_path.name, "source_device": (source.meta.get("device") or {}).get("name"),
        "target": {"backend": backend, "threads": threads, "device": (new.meta.get("device") or {}).get("name")},
        "entries": len(new.entries), "measured": len(new.entries) - len(new.transferred),
        "measured_share": round((len(new.entries) - len(new.transferred)) / len(new.entries), 4),
        "entry_error": entry_errors(new, full),
        "held_out": {k: new.meta["transfer"]["model"]["held_out"][k] for k in ("n", "mape", "within_10pct")},
        "networks": {"n": len(measured), "measured": report["measured"],
                     "branches_per_cell": "0.5 of the ops (supernet density)" if args.branches is None
                     else "{:g}-{:g}".format(*args.branches),
                     "transferred": network_metrics([s["predicted_ms"] for s in report["samples"]], measured),
                     "full_build": network_metrics([predict(full, a)["latency_ms"] for a in archs], measured_full)},
        "calibration_factor": {"transferred": new.calibration_factor, "full_build": full.calibration_factor},
        "time_s": {"transfer": None if transfer_s is None else round(transfer_s, 1),
                   "full_build": None if full_s is None else round(full_s, 1)},
    }
    result["time_ratio"] = (round(transfer_s / full_s, 4) if transfer_s is not None and full_s else None)
    result["targets"] = {
        "measured_share": result["measured_share"] <= TARGETS["measured_share"] + 1e-9,
        "within_10pct": result["networks"]["transferred"]["within_10pct"] >= TARGETS["within_10pct"],
        "band_spearman": (result["networks"]["transferred"]["band_spearman"] or 0) >= TARGETS["band_spearman"],
        "time_ratio": None if result["time_ratio"] is None else result["time_ratio"] <= TARGETS["time_ratio"],
    }
    return result


def summary_rows(results: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for name, r in results.items():
        t, f = r["networks"]["transferred"], r["networks"]["full_build"]
        rows.append([name, f"{r['measured']}/{r['entries']} ({r['measured_share']:.0%})",
                     f"{r['entry_error']['mape']:.1%}", f"{t['within_10pct']:.0%} / {f['within_10pct']:.0%}",
                     f"{t['mape']:.1%} / {f['mape']:.1%}", f"{t['spearman']:.3f} / {f['spearman']:.3f}",
                     f"{t['band_spearman']} / {f['band_spearman']} (n={t['band_n']})",
                     "-" if r["time_ratio"] is None else f"{r['time_ratio']:.0%}"])
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench_transfer"), help="folder of the tables and the report")
    ap.add_argument("--pairs", default="shipped,threads,torch", help="comma-separated: " + ", ".join(PAIRS))
    ap.add_argument("--samples", type=int, default=60, help="random networks validated per pair")
    ap.add_argument("--branches", type=branch_range, metavar="FEWEST-MOST",
                    help="validate on sparse networks, their mean branches per cell evenly spaced over this range "
                         "(as 'hwnas validate --branches'; e.g. 1-3, as searches end with); default: every op of "
                         "every cell drawn with probability 0.5")
    ap.add_argument("--budget", type=float, default=0.1, help="share of the entries the transfer measures")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--space", default="latency19")
    ap.add_argument("--macro", default="latency")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, help="override the protocol's rounds (quick checks of the script)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from tabulate import tabulate

    from hwnas.profiling.protocol import Protocol

    pairs = [p.strip() for p in args.pairs.split(",") if p.strip()]
    unknown = [p for p in pairs if p not in PAIRS]
    if unknown:
        ap.error(f"unknown pair {unknown[0]!r}: choose from {', '.join(PAIRS)}")
    if "shipped" in pairs and (args.space, args.macro, args.batch) != ("latency19", "latency", 16):
        ap.error("the shipped pair transfers latency19 on latency at batch 16: leave --space, --macro, --batch")
    protocol = Protocol()
    if args.rounds is not None:
        protocol = replace(protocol, rounds=args.rounds)
    args.out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float | None] = {}
    results: dict[str, Any] = {}
    for name in pairs:
        results[name] = run_pair(name, args, protocol, times)
        (args.out / "report.json").write_text(json.dumps({"pairs": results, "targets": TARGETS}, indent=1) + "\n")
    if args.json:
        print(json.dumps({"pairs": results, "targets": TARGETS}, indent=1))
    else:
        print(tabulate(summary_rows(results), ["pair", "measured", "entry MAPE", "nets ±10% (transfer / full)",
                                               "MAPE", "Spearman", f"Spearman in ±{BAND:.0%} band", "time vs full"]))
        for name, r in results.items():
            reached = ", ".join(f"{k} {'yes' if v else 'no' if v is not None else 'not timed'}"
                                for k, v in r["targets"].items())
            print(f"{name}: reaches the benchmark figures: {reached}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
