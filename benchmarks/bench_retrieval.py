"""Pareto retrieval: the search's evaluation of all candidates at once (hwnas.search.evaluation,
shared prefixes) against the per-candidate reference (hwnas.search.retrieval.evaluate), in one run.

The problem is a small one on the CPU: a space of 8 ops, a 5-cell macro-architecture at 32x32,
4 classes, 512 synthetic images (461 for training and calibration, 51 held out); a supernet of
K = 3 ops per layer trained for one epoch; then NSE's D + D_e = 2000 + 100 distinct candidates
drawn from P(theta) and priced by the table (which of them a constraint would accept does not
change how they are evaluated). Both paths recalibrate every candidate's batch norms on all 461
training images and measure it on the 51 held-out ones (the search's defaults: bn_images
20,000, eval_images all, eval_batch 256). Reported: each path's seconds for the round's
retrieval, the ratio, whether the accuracies and the Pareto fronts of (cost, accuracy) are
identical, and the process's peak resident memory.

    python benchmarks/bench_retrieval.py [--samples 2100] [--threads N] [--reference-samples N] [-o out.json]

The reference evaluates one candidate at a time and takes far longer than the new path: at the
default size expect it to run for a long while. --reference-samples N times it on N of the
candidates only (its seconds for all are then extrapolated, and the fronts are not compared).

--fixture DIR writes the problem as files and stops: DIR/table.json (MACs only) and DIR/data.npz,
and prints a `hwnas search run` command on them with the search's defaults (a MACs target at the
median of random architectures), which times whole rounds:

    python benchmarks/bench_retrieval.py --fixture fx
    hwnas search run --table fx/table.json --data fx/data.npz --target-macs M --rounds 2 --K 3 --epochs 1 -o fx/run
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from hwnas.profiling.backends import get_backend
from hwnas.profiling.build import build_table
from hwnas.profiling.table import Table
from hwnas.search import SearchConfig, TensorImages
from hwnas.search.data import fixed_batches, split_held_out
from hwnas.search.evaluation import evaluate_all
from hwnas.search.pareto import pareto_front
from hwnas.search.retrieval import Sampler, configs_of, evaluate
from hwnas.search.training import RoundTrainer
from hwnas.spaces import builtin
from hwnas.spaces.catalog import catalog_from_dict

OPS = ["dw_k3_t1", "dw_k3_t3", "dw_k5_t1", "dw_k5_t3", "dw_k7_t3", "conv_k3_t1", "dual_k3_t1", "ssc_k5_t1"]
MACRO = {"bench32": {"input": 32, "stem": {"channels": 16, "stride": 1}, "head": {"conv1x1": 128, "classes": 4},
                     "stages": [{"channels": 16, "cells": 1, "first": "N"}, {"channels": 24, "cells": 2, "first": "R"},
                                {"channels": 32, "cells": 1, "first": "R"}, {"channels": 48, "cells": 1, "first": "E"}]}}


def problem(folder: Path, images: int, seed: int) -> tuple[Table, TensorImages]:
    """The table (MACs and params; no device needed) and a learnable image set."""
    base = builtin().spaces["latency19"]
    space = {"bench8": {"ops": [next(o for o in base.to_dict()["ops"] if o["name"] == n) for n in OPS]}}
    cat = catalog_from_dict({"spaces": space, "macro": MACRO}, "bench", builtin())
    path = folder / "table.json"
    build_table(cat.spaces["bench8"], cat.macros["bench32"], 1.0, get_backend("none"), 16, path, progress=False)
    x, y = pixels(images, seed)
    return Table.load(path), TensorImages(x, y)


def pixels(images: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] and labels: each class brightens its own band of one channel."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (images,), generator=g)
    x = torch.rand(images, 3, 32, 32, generator=g) * 0.5
    for c in range(4):
        x[y == c, c % 3, (c // 2) * 16:(c // 2) * 16 + 16, :] += 0.5
    return x.clamp(0, 1), y


def write_fixture(folder: Path, images: int, seed: int) -> int:
    """The problem as a table and an .npz, and a search command on them."""
    import numpy as np

    from hwnas.profiling.predict import predict
    from hwnas.spaces.sampling import sample_architecture

    folder.mkdir(parents=True, exist_ok=True)
    table, _ = problem(folder, images, seed)
    x, y = pixels(images, seed)
    np.savez(folder / "data.npz", images=x.numpy(), labels=y.numpy())
    rng = random.Random(seed)
    macs = sorted(predict(table, sample_architecture(table.space(), table.macro(), 1.0, rng))["macs"]
                  for _ in range(200))
    target = round(macs[len(macs) // 2] / 1e6, 3)
    print(f"hwnas search run --table {folder}/table.json --data {folder}/data.npz --target-macs {target} "
          f"--rounds 2 --K 3 --epochs 1 -o {folder}/run")
    return 0


def candidates(trainer: RoundTrainer, count: int, seed: int) -> tuple[list[Any], list[float]]:
    """`count` distinct configurations drawn from P(theta), and their prices."""
    sampler = Sampler(trainer.fitness, trainer.costs, trainer.layer_ops)
    gen = torch.Generator().manual_seed(seed)
    drawn = sampler.sample(count, lambda cost: True, "sample", gen, 50 * count)
    return [configs_of(c.ops, trainer.layer_ops) for c in drawn], [c.cost for c in drawn]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=2100, help="candidates (NSE: D + D_e = 2000 + 100)")
    ap.add_argument("--reference-samples", type=int, default=0,
                    help="time the reference on this many candidates only (0: all)")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", help="write the report as JSON here")
    ap.add_argument("--fixture", metavar="DIR", help="write the problem's table and data here and stop")
    args = ap.parse_args()
    if args.fixture:
        return write_fixture(Path(args.fixture), args.images, args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        table, data = problem(Path(tmp), args.images, args.seed)
    cfg = SearchConfig(metric="macs", target=1e9, k=3, epochs=1, seed=args.seed)  # the search's defaults otherwise
    train, held = split_held_out(data, cfg.held_out, cfg.seed)
    slots = len(table.macro().slots(1.0))
    ops = list(range(len(OPS)))
    random.Random(args.seed).shuffle(ops)
    trainer = RoundTrainer(table, [sorted(ops[:cfg.k]) for _ in range(slots)], [[] for _ in range(slots)], cfg,
                           train, held, 1)
    t0 = time.perf_counter()
    trainer.run()
    train_s = time.perf_counter() - t0
    configs, costs = candidates(trainer, args.samples, args.seed)
    calibration = fixed_batches(train, cfg.bn_images, cfg.eval_batch, 1)
    held_out = fixed_batches(held, cfg.eval_images, cfg.eval_batch, 2)
    net = trainer.net

    t0, c0 = time.perf_counter(), time.process_time()
    fast = evaluate_all(net, configs, calibration, held_out)
    fast_s, fast_cpu_s = time.perf_counter() - t0, time.process_time() - c0

    count = args.reference_samples or len(configs)
    subset = sorted(random.Random(args.seed).sample(range(len(configs)), min(count, len(configs))))
    t0, c0 = time.perf_counter(), time.process_time()
    ref = {i: evaluate(net, configs[i], calibration, held_out) for i in subset}
    share = len(configs) / len(subset)
    ref_all_s, ref_all_cpu_s = (time.perf_counter() - t0) * share, (time.process_time() - c0) * share

    report: dict[str, Any] = {
        "candidates": len(configs), "layers": slots, "k": cfg.k, "calibration_images": len(train),
        "held_out_images": len(held), "threads": torch.get_num_threads(), "training_s": round(train_s, 2),
        "evaluate_all_s": round(fast_s, 2), "reference_s": round(ref_all_s, 2),
        "reference_extrapolated_from": None if len(subset) == len(configs) else len(subset),
        "speedup": round(ref_all_s / fast_s, 2),
        # processor seconds too: on a loaded machine their ratio moves less than the wall clock's
        "evaluate_all_cpu_s": round(fast_cpu_s, 2), "reference_cpu_s": round(ref_all_cpu_s, 2),
        "cpu_speedup": round(ref_all_cpu_s / fast_cpu_s, 2),
        "accuracies_identical": all(ref[i] == fast[i] for i in subset),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    if len(subset) == len(configs):
        front = pareto_front([(c, a) for c, a in zip(costs, fast)])
        ref_front = pareto_front([(c, ref[i]) for i, c in enumerate(costs)])
        report["front_identical"] = front == ref_front
        report["front"] = [[costs[i], fast[i]] for i in front]
    print(json.dumps(report, indent=1))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
