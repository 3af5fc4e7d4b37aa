"""`hwnas search --dry-run`: theta against the resource regularizer alone."""

from __future__ import annotations

import argparse
from typing import Any

from hwnas.cli.output import print_json, table
from hwnas.errors import HwnasError
from hwnas.supernet.search import DEFAULT_K, DEFAULT_LR


def register(sub: Any) -> None:
    s = sub.add_parser(
        "search", help="calibrate the resource regularizer (dry run: no data, no weights)",
        description="Optimise the fitness indicators (theta) against the resource regularizer alone and "
                    "report the trajectory of the expected cost E[C]: the tool for choosing alpha, beta and "
                    "the target before training a supernet. Units: ms per batch for latency, millions of "
                    "MACs per image for macs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--dry-run", action="store_true", required=True,
                   help="required: only the regularizer is optimised (a full search needs data and a GPU)")
    s.add_argument("--table", required=True, help="lookup table (its space and macro are used)")
    s.add_argument("--space", metavar="NAME|FILE", help="refuse unless the table is of this space")
    s.add_argument("--macro", metavar="NAME|FILE", help="refuse unless the table is of this macro-architecture")
    s.add_argument("--metric", choices=["latency", "macs"], required=True)
    s.add_argument("--target", type=float, required=True, help="tau, in the metric's units")
    s.add_argument("--form", choices=["nse", "nss", "linear", "fbnet"], default="nse")
    s.add_argument("--alpha", type=float, default=None, help="default: NSE's (2e-2 latency, 1e-5 macs)")
    s.add_argument("--beta", type=float, default=None, help="default: NSE's (2)")
    s.add_argument("--outer", choices=["expected", "sampled"], default="expected",
                   help="the penalty's derivative at the exact E[C] (unbiased fixed point) or at the sampled "
                        "cost (NSE's literal form, settles 1-4%% off the target)")
    s.add_argument("--steps", type=int, default=400)
    s.add_argument("--lr", type=float, default=DEFAULT_LR, help="Adam learning rate of theta (cosine-decayed)")
    s.add_argument("--k", type=int, default=DEFAULT_K,
                   help="candidate ops per layer, drawn from the space (NSE's K: 6 latency, 5 FLOPs); "
                        "0 for the whole space")
    s.add_argument("--pairs", type=int, default=1, help="configuration pairs averaged per step")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_search)


def cmd_search(args: argparse.Namespace) -> int:
    from hwnas.profiling.table import Table
    from hwnas.spaces import resolve_macro, resolve_space
    from hwnas.supernet.search import dry_run

    tbl = Table.load(args.table)
    if args.space and resolve_space(args.space).to_dict() != tbl.meta.get("space_def"):
        raise HwnasError(f"the table is of space {tbl.meta.get('space')}, not {args.space}")
    if args.macro and resolve_macro(args.macro).to_dict() != tbl.meta.get("macro_def"):
        raise HwnasError(f"the table is of macro-architecture {tbl.meta.get('macro')}, not {args.macro}")
    if args.steps < 1:
        raise HwnasError("--steps must be at least 1")
    result = dry_run(tbl, args.metric, args.target, args.form, args.alpha, args.beta, args.steps, args.lr,
                     args.k or None, args.seed, pairs_per_step=args.pairs, outer=args.outer)
    if args.json:
        print_json(result)
        return 0
    unit = result["unit"]
    rows = [[t["step"], f"{t['expected']:.3f}", f"{(t['expected'] - args.target) / args.target:+.2%}"]
            for t in result["trajectory"][:: max(1, len(result["trajectory"]) // 12)]]
    print(table(rows, ["step", f"E[C] ({unit})", "vs target"]))
    print(f"E[C]: {result['initial_expected']:.3f} -> {result['final_expected']:.3f} {unit} "
          f"(target {args.target} {unit}, {result['relative_error']:+.2%}); reachable "
          f"{result['min_cost']:.3f}..{result['max_cost']:.3f}; form {result['form']}, alpha {result['alpha']}, "
          f"beta {result['beta']}")
    return 0
