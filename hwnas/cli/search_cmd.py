"""`hwnas search run`: the NSE search on data; `hwnas search --dry-run`: theta against the
resource regularizer alone."""

from __future__ import annotations

import argparse
import os
from typing import Any

from hwnas.cli import options as opt
from hwnas.cli.output import millions, print_json, table
from hwnas.errors import HwnasError
from hwnas.supernet.regularizer import ALPHA_SCALINGS, DEFAULT_ALPHA_SCALING, DEFAULT_OUTER, FORMS, OUTER
from hwnas.supernet.search import DEFAULT_K, DEFAULT_LR


def register(sub: Any) -> None:
    s = sub.add_parser(
        "search", help="search a network on data (search run), or calibrate the regularizer (--dry-run)",
        description="'hwnas search run ...' runs the NSE search on image data (see 'hwnas search run "
                    "--help'). 'hwnas search --dry-run ...' optimises the fitness indicators (theta) against "
                    "the resource regularizer alone and reports the trajectory of the expected cost E[C]: the "
                    "tool for choosing alpha, beta and the target before training a supernet. Units: calibrated ms per "
                    "batch (as 'hwnas predict' reports) for latency, millions of MACs per image for macs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    actions = s.add_subparsers(dest="search_action", metavar="ACTION", parser_class=type(s))
    actions.required = False
    register_run(actions)
    s.add_argument("--dry-run", action="store_true",
                   help="only the regularizer is optimised (no data, no weights)")
    s.add_argument("--table", help="lookup table (its space and macro are used)")
    s.add_argument("--space", metavar="NAME|FILE", help="refuse unless the table is of this space")
    s.add_argument("--macro", metavar="NAME|FILE", help="refuse unless the table is of this macro-architecture")
    s.add_argument("--metric", choices=["latency", "macs"])
    opt.add_number(s, "--target", rng=opt.TARGET, help="tau, in the metric's units")
    s.add_argument("--form", choices=FORMS, default="nse")
    opt.add_number(s, "--alpha", rng=opt.ALPHA, default=None,
                   help="default: NSE's (2e-2 latency, 1e-5 macs), scaled as --alpha-scaling says")
    s.add_argument("--alpha-scaling", choices=ALPHA_SCALINGS, default=DEFAULT_ALPHA_SCALING,
                   help="the nse form's default alpha: NSE's scaled to the target, alpha * (tau_NSE / tau) ** beta "
                        "(relative), or as it is (fixed); the same setting as 'search run' has")
    opt.add_number(s, "--beta", rng=opt.BETA, default=None, help="default: NSE's (2)")
    s.add_argument("--outer", choices=OUTER, default=DEFAULT_OUTER,
                   help="the penalty's derivative at the exact E[C] (unbiased fixed point) or at the sampled "
                        "cost (NSE's literal form, settles 1-4%% off the target)")
    opt.add_number(s, "--steps", rng=opt.STEPS, default=400, help="optimisation steps")
    opt.add_number(s, "--lr", rng=opt.LEARNING_RATE, default=DEFAULT_LR, help="Adam learning rate of theta (cosine-decayed)")
    opt.add_number(s, "--k", rng=opt.COUNT0, default=DEFAULT_K,
                   help="candidate ops per layer, drawn from the space (NSE's K: 6 latency, 5 FLOPs); "
                        "0 for the whole space")
    opt.add_number(s, "--pairs", rng=opt.COUNT, default=1, help="configuration pairs averaged per step")
    opt.add_seed(s)
    opt.add_json(s)
    s.set_defaults(func=cmd_search, search_parser=s)


def cmd_search(args: argparse.Namespace) -> int:
    from hwnas.profiling.table import Table
    from hwnas.spaces import resolve_macro, resolve_space
    from hwnas.supernet.search import dry_run

    if getattr(args, "search_action", None) is None:
        missing = [flag for flag, value in (("--dry-run", args.dry_run), ("--table", args.table),
                                            ("--metric", args.metric), ("--target", args.target)) if not value]
        if missing:
            args.search_parser.error(f"needs {', '.join(missing)} (a dry run), or the action 'run'")
    tbl = Table.load(args.table)
    if args.space and resolve_space(args.space).to_dict() != tbl.meta.get("space_def"):
        raise HwnasError(f"the table is of space {tbl.meta.get('space')}, not {args.space}")
    if args.macro and resolve_macro(args.macro).to_dict() != tbl.meta.get("macro_def"):
        raise HwnasError(f"the table is of macro-architecture {tbl.meta.get('macro')}, not {args.macro}")
    result = dry_run(tbl, args.metric, args.target, args.form, args.alpha, args.beta, args.steps, args.lr,
                     args.k or None, args.seed, pairs_per_step=args.pairs, outer=args.outer,
                     alpha_scaling=args.alpha_scaling)
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


def register_run(actions: Any) -> None:
    from hwnas.cli.options import BATCH, COUNT, COUNT0, ROUNDS, SEED, TARGET, add_number, add_threads
    from hwnas.search.config import CONSTRAINTS, PRESETS

    r = actions.add_parser(
        "run", help="the NSE search on image data, driven by a lookup table",
        description="Search a network with NSE's evolution loop (Ci et al., ICCV 2021): train a supernet on a "
                    "subset of K ops per layer (weights on Bernoulli(0.5) subnets; fitness indicators with the "
                    "table-driven regularizer on a held-out split), retrieve the Pareto front of (table cost, "
                    "accuracy), keep its ops and refill each layer to K with ops not tried there yet; repeat "
                    "until a layer's pool runs out or the rounds are spent. The run folder keeps a checkpoint "
                    "(--resume), the log, every round's subset, thetas, samples and front, and the final front as "
                    "architecture files for 'hwnas export onnx', 'hwnas bench' and 'hwnas predict'. After a "
                    "round's first steps it prints (and logs) an estimate of the round's time: training, theta "
                    "and retrieval; where retrieval takes most of it, lower --samples. Every setting can come "
                    "from --preset, then --config (YAML or JSON), the options below overriding both. Launched by "
                    "torchrun (torchrun --nproc-per-node N -m hwnas.cli.main search run ...), it trains data-parallel "
                    "over the N processes, the batch being the global one; only rank 0 writes and prints.",
        formatter_class=argparse.HelpFormatter)
    r.add_argument("--table", required=True, help="lookup table: its space, macro-architecture and prices")
    r.add_argument("--data", required=True, metavar="DIR|FILE.npz",
                   help="an image folder (one sub-folder per class, all images of one size) or an .npz with "
                        "'images' (N, C, H, W; float or uint8) and 'labels' (N,)")
    target = r.add_mutually_exclusive_group(required=True)
    add_number(target, "--target-ms", rng=TARGET, default=None,
               help="latency constraint and target, ms per batch as the table predicts it")
    add_number(target, "--target-macs", rng=TARGET, default=None, help="MACs constraint and target, millions per image")
    r.add_argument("--preset", choices=sorted(PRESETS),
                   help="start from a set of settings: nse-paper is NSE's appendix (Nesterov SGD lr 0.4, batch 1024, "
                        "100 epochs with 2 warm-up; theta by Adam lr 0.1; K 6 latency / 5 MACs; D 2000 drawn, D_e "
                        "100; the interval constraint; 20k BN images, 50k evaluation images; the regularizer's "
                        "literal form). --config and the options below override it; config.json records each "
                        "value's source")
    r.add_argument("--constraint", choices=CONSTRAINTS, default=None,
                   help="budget (default): cost <= target; interval (NSE's): cost in [target, target * (1 + "
                        "margin)] (margin 0.1 unless set in --config), with edge samples drawn just below the "
                        "target to correct the front. Only architectures within it are kept, inherited and written")
    add_number(r, "--rounds", rng=ROUNDS, default=None, help="at most this many rounds (default 100; the search ends earlier when a layer's pool runs out)")
    add_number(r, "--K", dest="k", rng=COUNT, default=None, help="candidate ops per layer (default: NSE's, 6 for "
                                                                  "latency, 5 for MACs)")
    add_number(r, "--epochs", rng=COUNT, default=None, help="supernet epochs per round (default 10)")
    add_number(r, "--batch", rng=BATCH, default=None, help="training batch, over all processes (default 64)")
    add_number(r, "--samples", rng=COUNT, default=None,
               help="D: distinct architectures drawn from the fitness indicators in each Pareto retrieval; those "
                    "outside the constraint are discarded (default 200; NSE 2000)")
    add_number(r, "--edge-samples", rng=COUNT0, default=None,
               help="D_e, interval constraint only: architectures just below the target evaluated to correct the "
                    "front (default D / 20; NSE 100)")
    r.add_argument("--outer", choices=OUTER, default=None,
                   help="the regularizer's derivative at the exact E[C] (expected, the default: E[C] settles on the "
                        "target) or at the sampled cost (sampled: NSE's literal form)")
    r.add_argument("--alpha-scaling", choices=ALPHA_SCALINGS, default=None,
                   help="NSE's alpha scaled to the target, alpha * (tau_NSE / tau) ** beta (relative, the default), "
                        "or taken as it is (fixed: NSE's constant, set for 7 ms and 300 MFLOPs)")
    r.add_argument("--config", metavar="C.yaml", help="settings file (YAML or JSON); copied into the run folder")
    r.add_argument("--fused", action="store_true", default=None,
                   help="the fused multi-branch layer on the CPU too (always used on GPUs)")
    r.add_argument("--device", help="torch device (default: cuda when available, else cpu; under torchrun on GPUs "
                                    "each process takes cuda:LOCAL_RANK)")
    add_threads(r, help="CPU threads of torch (default: torch's, which is 1 under torchrun; small networks often "
                        "run fastest on 1)")
    add_number(r, "--seed", rng=SEED, default=None, help="random seed (default 0)")
    r.add_argument("-o", "--output", required=True, metavar="RUN", help="run folder")
    r.add_argument("--resume", action="store_true", help="continue the run in RUN from its last checkpoint")
    r.add_argument("--json", action="store_true", help="print the result as JSON")
    r.add_argument("--quiet", action="store_true", help="no progress bars (log.jsonl in the run folder still records "
                                                       "the progress)")
    r.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from hwnas.profiling.table import Table
    from hwnas.search import load_data, read_config, search
    from hwnas.search.config import layered

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    options = {"k": args.k, "epochs": args.epochs, "batch": args.batch, "rounds": args.rounds, "seed": args.seed,
               "fused": args.fused, "constraint": args.constraint, "samples": args.samples,
               "edge_samples": args.edge_samples, "outer": args.outer, "alpha_scaling": args.alpha_scaling}
    options = {k: v for k, v in options.items() if v is not None}
    if args.target_ms is not None:
        options.update(metric="latency", target=args.target_ms)
    else:
        options.update(metric="macs", target=args.target_macs)
    cfg, given = layered(options["metric"], args.preset, read_config(args.config) if args.config else None,
                         args.config, options)
    lut = Table.load(args.table)  # before the data: a large image folder takes a while to read
    reading = not args.quiet and os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 shows the bar
    result = search(lut, load_data(args.data, progress=reading), cfg, args.output, resume=args.resume,
                    device=args.device, progress=not args.quiet, config_source=args.config,
                    sources={"paths": {"table": str(args.table), "data": str(args.data)}}, setting_sources=given)
    if not result.main:  # a data-parallel run reports once, from rank 0
        return 0
    if args.json:
        print_json(result.to_dict())
        return 0
    if not result.front:
        raise HwnasError(f"no architecture of the last round met the constraint ({result.constraint}); the rounds are "
                         f"in {result.run_dir}: draw more (--samples), widen the interval (margin), or check the "
                         f"target against the reachable costs ('hwnas search --dry-run')")
    rows = [[f["file"], f"{f['latency_ms']:.3f}" if f["latency_ms"] is not None else "-", millions(f["macs"]),
             f"{f['params']:,}", f"{f['supernet_accuracy']:.2%}"] for f in result.front]
    print(table(rows, ["architecture", "latency ms", "MACs", "params", "supernet accuracy"]))
    why = "a layer's pool ran out" if result.stopped == "pool" else "the rounds were spent"
    print(f"{result.rounds} round(s), ended because {why}; results in {result.run_dir}")
    return 0
