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
from hwnas.search import SearchConfig, TensorImages, search
from hwnas.spaces import builtin
from hwnas.spaces.arch import Architecture
from hwnas.spaces.catalog import catalog_from_dict
from hwnas.spaces.sampling import sample_architecture

MACRO = {"digits16": {"input": 16, "stem": {"channels": 16, "stride": 1}, "head": {"conv1x1": 128, "classes": 10},
                      "stages": [{"channels": 16, "cells": 1, "first": "N"}, {"channels": 24, "cells": 2, "first": "R"},
                                 {"channels": 40, "cells": 2, "first": "R"}, {"channels": 64, "cells": 1, "first": "E"}]}}


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("this demonstration needs scikit-learn (its digits dataset ships inside it): pip install scikit-learn")
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=16, mode="bilinear", align_corners=False)
    return x, torch.tensor(d.target)


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", required=True, help="folder for the table, the run and report.json")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=4, help="supernet epochs per round")
    ap.add_argument("--samples", type=int, default=100, help="D")
    ap.add_argument("--train-epochs", type=int, default=15, help="standalone training of each compared network")
    ap.add_argument("--finalists", type=int, default=3, help="searched architectures compared")
    ap.add_argument("--randoms", type=int, default=2, help="random architectures per searched one")
    ap.add_argument("--target-quantile", type=float, default=0.3,
                    help="the target: this quantile of the predicted latency of random architectures "
                         "with about two ops per cell")
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

    table_path = out / "digits16_latency19_ort.json"
    cat = catalog_from_dict({"macro": MACRO}, "digits16", builtin())
    if not table_path.exists() or not Table.load(table_path).meta.get("complete"):
        t0 = time.perf_counter()
        quick = Protocol(rounds=5)
        build_table(cat.spaces["latency19"], cat.macros["digits16"], 1.0, get_backend("ort", threads=1), 16,
                    table_path, resume=table_path.exists(), protocol=quick, progress=True)
        report["table_build_s"] = round(time.perf_counter() - t0, 1)
    table = Table.load(table_path)

    rng = random.Random(args.seed)
    # Random architectures with about as many ops per cell as a round's sampled subnets (p = 0.1
    # of 19 ops: ~2 per cell, as Bernoulli(0.5) over K = 4)
    lat = sorted(predict(table, sample_architecture(table.space(), table.macro(), 1.0, rng, p=0.1))["latency_ms"]
                 for _ in range(300))
    target = round(lat[int(args.target_quantile * len(lat))], 4)
    report["target_ms"] = target
    report["random_latency_ms"] = {"min": lat[0], "median": lat[len(lat) // 2], "max": lat[-1]}
    cfg = SearchConfig(metric="latency", target=target, rounds=args.rounds, k=args.k, epochs=args.epochs, batch=64,
                       lr=0.2, samples=args.samples,
                       bn_images=512, eval_batch=256, seed=args.seed, checkpoint_every=100)
    t0 = time.perf_counter()
    run = out / "run"
    result = search(table, train, cfg, run, resume=(run / "checkpoint.pt").exists())
    report["search_s"] = round(time.perf_counter() - t0, 1)
    summary = json.loads((run / "result.json").read_text())
    report["rounds"] = [{"round": h["round"], "seconds": h["seconds"], "evaluated": h["evaluated"],
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
          f"predicted latency); {len(report['rounds'])} rounds in {report['search_s']} s, ended: {result.stopped}")
    print("| round | seconds | evaluated | front (ms, supernet accuracy) |\n|---|---|---|---|")
    for r in report["rounds"]:
        print(f"| {r['round']} | {r['seconds']} | {r['evaluated']} | "
              + ", ".join(f"{c} / {a:.3f}" for c, a, _ in r["front"]) + " |")
    print("| architecture | predicted ms | vs target | test accuracy | random, same latency (ms: accuracy) |\n|---|---|---|---|---|")
    for c in compared:
        print(f"| {c['arch']} | {c['latency_ms']:.4f} | {c['vs_target']:+.1%} | {c['test_accuracy']:.3f} | "
              + ", ".join(f"{r['latency_ms']:.4f}: {r['accuracy']:.3f}" for r in c["random"]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
