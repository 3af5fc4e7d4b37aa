"""Fused multi-branch layer vs the eager reference cell and torch.compile of it.

Forward + backward of one supernet cell in training mode, at supernet shapes: batch 16,
latency19 positions, K = 6 active branches, depthwise-heavy. All variants of a shape are
timed interleaved in the same rounds (the protocol of the latency tables), so a burst of
load on a shared machine hits all of them alike; speedups are ratios of medians.

    python benchmarks/bench_multibranch.py [--json] [--rounds 15] [--no-compile]

With a GPU, the CUDA path is timed as well (CUDA events).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
from collections.abc import Callable
from typing import Any, cast

import torch

from hwnas.profiling.protocol import CallRunner, Protocol, measure_interleaved
from hwnas.spaces import builtin
from hwnas.spaces.macro import Position
from hwnas.supernet import SupernetCell
from hwnas.supernet.fused import FusedSupernetCell

# latency19: dw_k3_t3, dw_k5_t3, dw_k7_t3, dw_k3_t6, dw_k5_t1, dual_k3_t1 (5 depthwise + 1 dense)
OPS = [1, 4, 7, 2, 3, 11]
SHAPES = [Position("N", 32, 32, 56, 1), Position("N", 64, 64, 28, 1), Position("R", 64, 128, 28, 2),
          Position("N", 128, 128, 14, 1)]


def make_step(module: torch.nn.Module, x: torch.Tensor, config: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        module.zero_grad(set_to_none=True)
        module(x, config).sum().backward()

    return step


def bench_position(space: Any, pos: Position, device: str, batch: int, protocol: Protocol,
                   compile_too: bool) -> dict[str, Any]:
    """Eager, fused (and compiled) forward + backward of one cell, timed interleaved; one row."""
    torch.manual_seed(0)
    ref = SupernetCell(space, OPS, pos).to(device).train()
    fused = FusedSupernetCell(ref)  # the same parameters
    x = torch.randn(batch, pos.cin, pos.resolution, pos.resolution, device=device)
    config = torch.ones(len(OPS), dtype=torch.bool)
    variants = {"eager": make_step(ref, x, config), "fused": make_step(fused, x, config)}
    if compile_too:
        # dynamic shapes fail in Inductor on out / terms; compile wraps the module in a Module
        compiled = cast(torch.nn.Module, torch.compile(ref, dynamic=False))
        variants["compile"] = make_step(compiled, x, config)
    sync = torch.cuda.synchronize if device == "cuda" else None  # the GPU work of the timed steps
    runners = {k: CallRunner(v, sync) for k, v in variants.items()}
    stats = measure_interleaved(runners, protocol, random.Random(0))
    row = {"device": device, "position": pos.key, "ops": [space.ops[i].name for i in OPS],
           **{f"{k}_ms": round(s.median, 3) for k, s in stats.items()},
           **{f"{k}_cov": round(s.cov, 4) for k, s in stats.items()},
           "speedup_vs_eager": round(stats["eager"].median / stats["fused"].median, 3)}
    if "compile" in stats:
        row["speedup_vs_compile"] = round(stats["compile"].median / stats["fused"].median, 3)
    return row


def bench_protocol(rounds: int) -> Protocol:
    return Protocol(warmup_ms=300, warmup_runs=3, min_sample_ms=20, rounds=rounds, max_remeasure=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile)")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    space = builtin().spaces["latency19"]
    protocol = bench_protocol(args.rounds)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows: list[dict[str, Any]] = []
    for device in devices:
        for pos in SHAPES:
            row = bench_position(space, pos, device, args.batch, protocol, not args.no_compile)
            rows.append(row)
            if not args.json:
                print(json.dumps(row), flush=True)

    def geomean(key: str, device: str) -> float | None:
        vals = [r[key] for r in rows if key in r and r["device"] == device]
        return round(math.exp(sum(math.log(v) for v in vals) / len(vals)), 3) if vals else None

    result = {"batch": args.batch, "threads": torch.get_num_threads(), "rounds": args.rounds,
              "speedup_vs_eager": geomean("speedup_vs_eager", "cpu"),
              "speedup_vs_compile": geomean("speedup_vs_compile", "cpu"), "rows": rows}
    if "cuda" in devices:
        result["cuda_speedup_vs_eager"] = geomean("speedup_vs_eager", "cuda")
    print(json.dumps(result, indent=2) if args.json else
          f"CPU geometric mean: fused {result['speedup_vs_eager']}x eager, {result['speedup_vs_compile']}x compile")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HWNAS_FUSED", "force")  # time the fused kernels themselves: no check, no fallback
    sys.exit(main())
