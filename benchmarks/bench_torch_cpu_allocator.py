"""Does a graph's time on the torch CPU backend depend on what ran before it? With glibc's
allocator as it is, and with freed memory kept (hwnas.profiling.cpu_allocator).

One entry is timed with the table's reference network in two groups: by itself, and beside the
largest entry of its position (which allocates ~10x more). A table's entry is its ratio to the
reference, so the ratio should not depend on the group. Each allocator setting runs in its own
process (mallopt cannot be undone), both in this run.

    python benchmarks/bench_torch_cpu_allocator.py --json

Target: the entry's ratio and the reference's time agree between the two groups within 5% with
freed memory kept.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys

from tabulate import tabulate

SMALL, LARGE = "dw_k3_t1", "dw_k7_t6"
LIMIT = 0.05


def child(rounds: int) -> dict[str, object]:
    from hwnas.profiling.backends import get_backend
    from hwnas.profiling.build import table_meta
    from hwnas.profiling.entries import load_entry, plan_groups
    from hwnas.profiling.protocol import Protocol, measure_referred
    from hwnas.profiling.reference import REFERENCE_SEED, reference_spec
    from hwnas.profiling.table import Table
    from hwnas.spaces import resolve_macro, resolve_space

    space, macro = resolve_space("latency19"), resolve_macro("latency")
    backend = get_backend("torch", threads=1)
    table = Table(table_meta(space, macro, 1.0, 16, backend, Protocol()))
    group = plan_groups(space, macro, 1.0, 16)[0]
    small = next(e for e in group if e.op == SMALL)
    large = next(e for e in group if e.op == LARGE)
    reference = load_entry(backend, reference_spec(table), REFERENCE_SEED)
    out: dict[str, object] = {"allocator": backend.describe()["allocator"], "entry": small.key}
    for name, specs in (("alone", [small]), ("beside_large", [small, large])):
        runners = {e.key: load_entry(backend, e, 0) for e in specs}
        got = measure_referred(runners, reference, Protocol(), random.Random(0), rounds=rounds)
        out[name] = {"ratio": got.ratios[small.key].median, "entry_ms": got.timed[small.key].median,
                     "reference_ms": got.reference.median}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds per group (default 15, the protocol's)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.rounds)))
        return 0
    results = {}
    for setting in ("system", "kept"):
        env = {**os.environ, "HWNAS_CPU_ALLOCATOR": setting}
        done = subprocess.run([sys.executable, __file__, "--child", "--rounds", str(args.rounds)], env=env,
                              capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"the {setting} run failed:\n{done.stderr.strip()}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        r["ratio_spread"] = r["beside_large"]["ratio"] / r["alone"]["ratio"] - 1
        r["reference_spread"] = r["beside_large"]["reference_ms"] / r["alone"]["reference_ms"] - 1
        results[setting] = r
    met = abs(results["kept"]["ratio_spread"]) <= LIMIT and abs(results["kept"]["reference_spread"]) <= LIMIT
    if args.json:
        print(json.dumps({"results": results, "limit": LIMIT, "targets_met": met}, indent=1))
    else:
        rows = [[s, r["allocator"], *(f"{r[g]['ratio']:.4f}" for g in ("alone", "beside_large")),
                 f"{r['ratio_spread']:+.1%}",
                 *(f"{r[g]['reference_ms']:.1f}" for g in ("alone", "beside_large")), f"{r['reference_spread']:+.1%}"]
                for s, r in results.items()]
        print(tabulate(rows, headers=["setting", "allocator", "ratio alone", "ratio beside large", "change",
                                      "ref ms alone", "ref ms beside large", "change"]))
        print(f"target: both changes within ±{LIMIT:.0%} with freed memory kept: {'met' if met else 'MISSED'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
