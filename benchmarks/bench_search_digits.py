"""Demonstration: the NSE search on a small real dataset, on the CPU.

scikit-learn's 8x8 handwritten digits (1797 images, 10 classes; shipped inside the package, no
download), upsampled to 16x16. A latency table of the latency19 space on a small 16x16
macro-architecture is built with onnxruntime on the CPU (batch 16), then a multi-round search
runs against a latency target. Reported: time per round, each round's front, the final
architectures' predicted latency against the target, and their test accuracy against random
architectures of the same predicted latency (within 5%), each trained from scratch with the
same budget.

    pip install scikit-learn
    python benchmarks/bench_search_digits.py -o digits_run [--rounds 4] [--epochs 4] [--train-epochs 15]
    python benchmarks/bench_search_digits.py -o digits_paper --preset nse-paper [--rounds 4]

With --preset nse-paper the search takes NSE's appendix settings (hwnas.search.config.PRESETS), the
options of this script overriding them only where given; without it, hwnas's practical defaults
with this script's sizes. The run's config.json records every setting and its source.

Writes OUT/report.json and prints the tables that docs/search.md shows.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from hwnas.model.network import build_network
from hwnas.profiling.backends import get_backend
from hwnas.profiling.build import build_table
from hwnas.profiling.predict import predict
from hwnas.profiling.protocol import Protocol
from hwnas.profiling.table import Table
from hwnas.search import TensorImages, search
from hwnas.search.config import PRESETS, layered
from hwnas.spaces import builtin
from hwnas.spaces.arch import Architecture
from hwnas.spaces.catalog import catalog_from_dict
from hwnas.spaces.sampling import sample_architecture

def macro(resolution: int = 16) -> dict[str, Any]:
    """A small macro-architecture for digits at `resolution` (stem 16 channels stride 1; stages 16,
    24 (2 cells), 40 (2 cells), 64; head 128), as an hwnas macro file's mapping."""
    return {f"digits{resolution}": {
        "input": resolution, "stem": {"channels": 16, "stride": 1}, "head": {"conv1x1": 128, "classes": 10},
        "stages": [{"channels": 16, "cells": 1, "first": "N"}, {"channels": 24, "cells": 2, "first": "R"},
                   {"channels": 40, "cells": 2, "first": "R"}, {"channels": 64, "cells": 1, "first": "E"}]}}


MACRO = macro(16)


def digits(resolution: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits in [0, 1], (N, 1, R, R), upsampled when R > 8."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("this benchmark needs scikit-learn (its digits dataset ships inside it): pip install scikit-learn")
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    if resolution != 8:
        x = F.interpolate(x, size=resolution, mode="bilinear", align_corners=False)
    return x, torch.tensor(d.target)


def latency_table(out: Path, resolution: int = 16) -> tuple[Table, float | None]:
    """The latency19 table of the digits macro-architecture, built with onnxruntime on the CPU at
    batch 16 (5 interleaved rounds) into OUT, or the one already there; and the build's seconds."""
    name = f"digits{resolution}"
    path = out / f"{name}_latency19_ort.json"
    seconds = None
    if not path.exists() or not Table.load(path).meta.get("complete"):
        cat = catalog_from_dict({"macro": macro(resolution)}, name, builtin())
        t0 = time.perf_counter()
        build_table(cat.spaces["latency19"], cat.macros[name], 1.0, get_backend("ort", threads=1), 16, path,
                    resume=path.exists(), protocol=Protocol(rounds=5), progress=True)
        seconds = round(time.perf_counter() - t0, 1)
    return Table.load(path), seconds


def latency_target(table: Table, quantile: float, seed: int) -> tuple[float, list[float]]:
    """This quantile of the predicted latency of 300 random architectures with about as many ops per
    cell as a round's sampled subnets (p = 0.1 of 19 ops: ~2 per cell, as Bernoulli(0.5) over
    K = 4), and those latencies, sorted."""
    rng = random.Random(seed)
    lat = sorted(predict(table, sample_architecture(table.space(), table.macro(), 1.0, rng, p=0.1))["latency_ms"]
                 for _ in range(300))
    return round(lat[int(quantile * len(lat))], 4), lat


def train_standalone(arch: Architecture, train: TensorImages, test_x: torch.Tensor, test_y: torch.Tensor,
                     epochs: int, seed: int, lr: float = 0.2) -> float:
    """Train the network from scratch (SGD, cosine) and return its test accuracy."""
    net = build_network(arch, seed)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=4e-5)
    n, batch = len(train), 64
    steps = epochs * (n // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for b in range(n // batch):
            idx = order[b * batch:(b + 1) * batch]
            x = train.images[idx].expand(-1, 3, -1, -1)
            loss = F.cross_entropy(net(x), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        pred = net(test_x.expand(-1, 3, -1, -1)).argmax(1)
    return float((pred == test_y).float().mean())


def random_like(table: Table, latency: float, rng: random.Random, tolerance: float = 0.05,
                tries: int = 20000) -> Architecture | None:
    """A random architecture of the whole space (branches Bernoulli(p), p varied) whose predicted
    latency is within `tolerance` of `latency`."""
    space, macro = table.space(), table.macro()
    for _ in range(tries):
        arch = sample_architecture(space, macro, 1.0, rng, p=rng.uniform(0.05, 0.5), name="random")
        if abs(predict(table, arch)["latency_ms"] / latency - 1) <= tolerance:
            return arch
    return None


def settings(pairs: list[str]) -> dict[str, Any]:
    """NAME=VALUE pairs as settings, each VALUE read as JSON where it is (3, 0.5, true), else a string."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            sys.exit(f"--set {pair}: expected NAME=VALUE")
        try:
            out[name] = json.loads(value)
        except ValueError:
            out[name] = value
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", required=True, help="folder for the table, the run and report.json")
    ap.add_argument("--preset", choices=sorted(PRESETS), help="start from these search settings (NSE's appendix)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--k", type=int, help="candidate ops per layer (default 4; the preset's with --preset)")
    ap.add_argument("--epochs", type=int, help="supernet epochs per round (default 4; the preset's with --preset)")
    ap.add_argument("--samples", type=int, help="D, drawn (default: hwnas's, or the preset's with --preset)")
    ap.add_argument("--train-epochs", type=int, default=15, help="standalone training of each compared network")
    ap.add_argument("--finalists", type=int, default=3, help="searched architectures compared")
    ap.add_argument("--randoms", type=int, default=2, help="random architectures per searched one")
    ap.add_argument("--target-quantile", type=float, default=0.3,
                    help="the target: this quantile of the predicted latency of random architectures "
                         "with about two ops per cell")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="any other search setting (hwnas.search.SearchConfig), e.g. --set outer=sampled "
                         "--set alpha_scaling=fixed; repeatable")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"args": vars(args)}

    x, y = digits()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(args.seed))
    cut = int(0.8 * len(y))
    train = TensorImages(x[order[:cut]], y[order[:cut]])
    test = TensorImages(x[order[cut:]], y[order[cut:]])  # standalone test split, unseen by the search

    table, report["table_build_s"] = latency_table(out)
    target, lat = latency_target(table, args.target_quantile, args.seed)
    report["target_ms"] = target
    report["random_latency_ms"] = {"min": lat[0], "median": lat[len(lat) // 2], "max": lat[-1]}
    # this script's sizes over hwnas's defaults without a preset; with one, only the options given
    sizes = {"k": args.k, "epochs": args.epochs, "samples": args.samples}
    if args.preset is None:
        sizes = {"k": 4, "epochs": 4, **{k: v for k, v in sizes.items() if v is not None}}
    options = {"metric": "latency", "target": target, "rounds": args.rounds, "seed": args.seed,
               "checkpoint_every": 100, **{k: v for k, v in sizes.items() if v is not None}, **settings(args.set)}
    cfg, sources = layered("latency", args.preset, None, None, options)
    report["settings"] = {k: [v, sources[k]] for k, v in cfg.to_dict().items()}
    t0 = time.perf_counter()
    run = out / "run"
    result = search(table, train, cfg, run, resume=(run / "checkpoint.pt").exists(), setting_sources=sources)
    report["search_s"] = round(time.perf_counter() - t0, 1)
    summary = json.loads((run / "result.json").read_text())
    report["constraint"] = summary["constraint"]
    report["rounds"] = [{"round": h["round"], "seconds": h["seconds"], "retrieval_seconds": h["retrieval_seconds"],
                         "evaluated": h["evaluated"], "drawn": h["drawn"], "accepted": h["accepted"], "edge": h["edge"],
                         "front": [(round(f["cost"], 4), round(f["accuracy"], 4), f["kind"]) for f in h["front"]]}
                        for h in summary["history"]]
    report["stopped"] = result.stopped

    final = sorted(result.front, key=lambda f: -f["latency_ms"])[:args.finalists]
    test_x, test_y = test.images, test.labels
    compared = []
    for i, f in enumerate(final):
        arch = catalog_from_dict(json.loads((run / f["file"]).read_text()), f["file"]).networks[f["arch"]]
        searched = train_standalone(arch, train, test_x, test_y, args.train_epochs, args.seed)
        randoms = []
        for j in range(args.randoms):
            other = random_like(table, f["latency_ms"], random.Random(args.seed * 1000 + 10 * i + j))
            if other is not None:
                randoms.append({"latency_ms": predict(table, other)["latency_ms"],
                                "accuracy": train_standalone(other, train, test_x, test_y, args.train_epochs, args.seed)})
        compared.append({"arch": f["arch"], "latency_ms": f["latency_ms"], "vs_target": f["latency_ms"] / target - 1,
                         "supernet_accuracy": f["supernet_accuracy"], "test_accuracy": searched, "random": randoms})
        print(json.dumps(compared[-1]), flush=True)
    report["compared"] = compared
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")

    print(f"target {target} ms per batch of 16 (the {args.target_quantile:.0%} quantile of random architectures' "
          f"predicted latency), constraint {result.constraint}; {len(report['rounds'])} rounds in "
          f"{report['search_s']} s, ended: {result.stopped}")
    print("| round | seconds (retrieval) | drawn / accepted / edge / evaluated | front (ms / supernet accuracy) |\n"
          "|---|---|---|---|")
    for r in report["rounds"]:
        print(f"| {r['round']} | {r['seconds']} ({r['retrieval_seconds']}) | {r['drawn']} / {r['accepted']} / "
              f"{r['edge']} / {r['evaluated']} | " + ", ".join(f"{c} / {a:.3f}" for c, a, _ in r["front"]) + " |")
    if not compared:
        print(f"no architecture of the last round met the constraint ({result.constraint}): nothing to compare; "
              f"more rounds or epochs let the regularizer bring the architectures to the target, and more "
              f"--samples draw more of them")
        return 0
    print("| architecture | predicted ms | vs target | test accuracy | random, same latency (ms: accuracy) |\n|---|---|---|---|---|")
    for c in compared:
        print(f"| {c['arch']} | {c['latency_ms']:.4f} | {c['vs_target']:+.1%} | {c['test_accuracy']:.3f} | "
              + ", ".join(f"{r['latency_ms']:.4f}: {r['accuracy']:.3f}" for r in c["random"]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
