"""Data-parallel search steps on CPUs: N processes (gloo, launched by torchrun) against one, on the
same global batch.

    python benchmarks/bench_data_parallel.py [--processes 2] [--batch 64] [--steps 24] [--warmup 3]
                                             [--repeats 3] [--json]

Times the supernet training steps of one search round (a weight step every step, a theta step
every second; latency19 ops, K = 4 per layer, a 32x32 macro-architecture, one thread per
process): one process, then N processes under torchrun with batch norms over the global batch
(sync_bn, the default) and on each process's share (sync_bn false), alternating, `--repeats`
times each. Reports the median steps per second of each and the speedups. With N free cores the
ideal is N; the gap is what the collectives cost (DDP's gradient buckets and theta's gradients;
with sync_bn one all-reduce per batch norm in forward and one in backward, whose latency adds
up). This measures the CPU path only: on GPUs NCCL and the compute per step change the balance.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MACRO = {"bench32": {"input": 32, "stem": {"channels": 16, "stride": 1}, "head": {"conv1x1": 256, "classes": 10},
                     "stages": [{"channels": 24, "cells": 2, "first": "E"}, {"channels": 40, "cells": 2, "first": "R"},
                                {"channels": 80, "cells": 2, "first": "R"}, {"channels": 96, "cells": 1, "first": "E"}]}}


def worker(args: argparse.Namespace) -> None:
    """One process of the measurement (rank 0 prints the result as JSON)."""
    import torch

    from hwnas.profiling.backends import get_backend
    from hwnas.profiling.build import build_table
    from hwnas.profiling.table import Table
    from hwnas.search import SearchConfig, TensorImages
    from hwnas.search.data import split_held_out
    from hwnas.search.distributed import join
    from hwnas.search.training import RoundTrainer
    from hwnas.spaces import builtin
    from hwnas.spaces.catalog import catalog_from_dict

    torch.set_num_threads(1)
    group = join("cpu")
    path = Path(args.table)
    if group.main and not path.exists():
        cat = catalog_from_dict({"macro": MACRO}, "bench32", builtin())
        build_table(cat.spaces["latency19"], cat.macros["bench32"], 1.0, get_backend("none"), 16, path,
                    progress=False)
    group.barrier()
    table = Table.load(path)
    steps = args.warmup + args.steps
    n = args.batch * steps * 10 // 9 + args.batch  # training images for one epoch of `steps`, and a held-out tenth
    gen = torch.Generator().manual_seed(0)
    data = TensorImages(torch.rand(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen))
    train, held = split_held_out(data, 0.1, 0)
    slots = table.macro().slots(1.0)
    cfg = SearchConfig(metric="macs", target=50.0, k=4, epochs=1, batch=args.batch, threshold=-100.0,
                       sync_bn=not args.local_bn).check()
    trainer = RoundTrainer(table, [[0, 3, 7, 12] for _ in slots], [[] for _ in slots], cfg, train, held, 1, group)
    for _ in range(args.warmup):
        trainer.train_step()
    group.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step()
    group.barrier()
    seconds = time.perf_counter() - start
    if group.main:
        print(json.dumps({"world": group.world, "steps": args.steps, "seconds": seconds}), flush=True)
    group.close()


def measure(processes: int, args: argparse.Namespace, table: Path, local_bn: bool = False) -> float:
    """Seconds for the timed steps, as rank 0 reports them."""
    own = [str(Path(__file__).resolve()), "--worker", "--table", str(table), "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup), *(["--local-bn"] if local_bn else [])]
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
              if processes > 1 else [sys.executable])
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launch, *own], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"the {processes}-process run failed:\n{proc.stderr[-3000:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["seconds"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=2, help="N, the data-parallel processes (default 2)")
    p.add_argument("--batch", type=int, default=64, help="the global batch (a multiple of N; default 64)")
    p.add_argument("--steps", type=int, default=24, help="timed steps per run (default 24)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each, alternating (default 3)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--table", help=argparse.SUPPRESS)
    p.add_argument("--local-bn", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    if args.batch % args.processes:
        p.error(f"--batch {args.batch} must be a multiple of --processes {args.processes}")
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "bench32.json"
        runs: dict[str, list[float]] = {"one": [], "sync_bn": [], "local_bn": []}
        for _ in range(args.repeats):
            runs["one"].append(measure(1, args, table))
            runs["sync_bn"].append(measure(args.processes, args, table))
            runs["local_bn"].append(measure(args.processes, args, table, local_bn=True))
    t1 = statistics.median(runs["one"])
    result: dict[str, object] = {"processes": args.processes, "batch": args.batch, "steps": args.steps,
                                 "cpus": os.cpu_count(), "seconds": runs, "one_process_steps_per_s": args.steps / t1}
    rows = [["1 process", f"{args.steps / t1:.2f}", "1.00x", ""]]
    for name in ("sync_bn", "local_bn"):
        tn = statistics.median(runs[name])
        result[name] = {"steps_per_s": args.steps / tn, "speedup": t1 / tn, "efficiency": t1 / tn / args.processes}
        what = "batch norm over the global batch" if name == "sync_bn" else "batch norm on each share"
        rows.append([f"{args.processes} processes, {what}", f"{args.steps / tn:.2f}", f"{t1 / tn:.2f}x",
                     f"{t1 / tn / args.processes:.0%}"])
    if args.json:
        print(json.dumps(result, indent=1))
        return
    from tabulate import tabulate

    print(tabulate(rows, ["", "steps/s", "speedup", "of ideal"], tablefmt="github"))
    print(f"median of {args.repeats} runs each, {args.steps} steps, global batch {args.batch}, "
          f"{result['cpus']} CPUs, one thread per process")


if __name__ == "__main__":
    main()
