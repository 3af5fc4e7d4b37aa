"""Re-parameterised vs plain export on ORT CPU at batch 16, and `hwnas bench` vs the
shipped table's prediction.

    python benchmarks/bench_export.py [--arch nsenet_gpu] [--json]

The plain and re-parameterised (padded and grouped depthwise merges) ONNX models of the
network are timed interleaved in one run with the latency-table protocol; speedups are
ratios of medians. Target: re-parameterised >= 1.0x plain (goal 1.2x).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

from hwnas.export.onnx_export import export_onnx
from hwnas.profiling.backends.ort import OrtBackend
from hwnas.profiling.protocol import Protocol, measure_interleaved
from hwnas.spaces import resolve_architecture


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="nsenet_gpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    arch = resolve_architecture(args.arch)
    tmp = Path(tempfile.mkdtemp())
    variants = {"plain": {}, "reparam_auto": {"reparam": True, "merge": "auto"},
                "reparam_padded": {"reparam": True, "merge": "padded"},
                "reparam_grouped": {"reparam": True, "merge": "grouped"}}
    backend = OrtBackend(threads=1)
    shape = (args.batch, 3, arch.macro.input, arch.macro.input)
    runners, nodes, errors = {}, {}, {}
    for name, options in variants.items():
        report = export_onnx(arch, tmp / f"{name}.onnx", batch=args.batch, **options)  # type: ignore[arg-type]
        nodes[name], errors[name] = report.nodes, report.max_rel_error
        runners[name] = backend.load_onnx((tmp / f"{name}.onnx").read_bytes(), [shape])
    protocol = Protocol(warmup_ms=500, warmup_runs=2, min_sample_ms=0, rounds=args.rounds, max_remeasure=1)
    stats = measure_interleaved(runners, protocol, random.Random(0))
    result = {"arch": args.arch, "batch": args.batch, "threads": 1, "nodes": nodes, "max_rel_error": errors,
              "median_ms": {k: round(s.median, 3) for k, s in stats.items()},
              "cov": {k: round(s.cov, 4) for k, s in stats.items()},
              "speedup_auto": round(stats["plain"].median / stats["reparam_auto"].median, 3),
              "speedup_padded": round(stats["plain"].median / stats["reparam_padded"].median, 3),
              "speedup_grouped": round(stats["plain"].median / stats["reparam_grouped"].median, 3)}
    print(json.dumps(result, indent=2) if args.json else json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
