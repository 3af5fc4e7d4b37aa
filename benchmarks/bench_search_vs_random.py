"""Does the search find better networks than chance? Searched architectures against random ones
of the same predicted latency, each trained from scratch with the same budget, over several seeds.

The task is made hard enough for architectures to differ: scikit-learn's handwritten digits
(shipped inside the package, no download) at their native 8x8, a small share of them for training
(30% by default; the other 70% test the trained networks) and short training. Every compared
network is trained at each budget of `--train-epochs` (default 4 and 10 epochs), each with its own
statistics: at 4 epochs small networks on this data are still starting to learn, so that budget
shows how soon one does rather than how well; at 10 they are past it and still apart.

Per seed (its own split of the data, its own search):
1. NSE's search (`hwnas.search`, its practical defaults with this script's sizes) against a latency
   target on a latency19 table of the digits macro-architecture built with onnxruntime on the CPU
   (batch 16; built once, shared by the seeds);
2. the searched architecture: of the last front, the one with the best supernet held-out
   accuracy (the dearer one of a tie);
3. `--randoms` random architectures of the whole space whose predicted latency is within 5% of it;
4. each trained from scratch on the same training images with the same optimiser, epochs and
   initialisation seed, and tested on the test images, at each budget.
A seed's difference at a budget is the searched network's test accuracy less the mean of its
random ones. Reported per budget: each seed, the mean difference with a 95% confidence interval,
a paired t-test and a Wilcoxon signed-rank test over the seeds (scipy). Each seed's result is
kept in OUT with the settings it was measured with, so a killed run continues where it stopped
(and a kept result is never mixed with other settings').

    pip install scikit-learn scipy
    python benchmarks/bench_search_vs_random.py -o vs_random            # sized for 20-30 min on 2 cores
    python benchmarks/bench_search_vs_random.py -o t --seeds 2 --rounds 1 --epochs 1 --train-epochs 1 2 \\
        --randoms 1 --samples 8 --target-quantile 0.7 --dataset synthetic   # a check of the script, no scikit-learn

`--dataset synthetic` replaces digits by noisy 8x8 class prototypes, for checking the script only.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench_search_digits import digits, latency_table, latency_target, random_like, train_standalone
from hwnas.profiling.predict import predict
from hwnas.profiling.table import Table
from hwnas.search import TensorImages, search
from hwnas.search.config import layered
from hwnas.spaces.catalog import catalog_from_dict

RESOLUTION = 8


def synthetic(n: int = 1797, seed: int = 12345) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy copies of 10 random 8x8 prototypes (N, 1, 8, 8) in [0, 1]: a stand-in for digits that
    needs no scikit-learn, to check this script."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(10, 1, RESOLUTION, RESOLUTION, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    x = (prototypes[y] + 0.35 * torch.randn(n, 1, RESOLUTION, RESOLUTION, generator=g)).clamp(0, 1)
    return x, y


def split(x: torch.Tensor, y: torch.Tensor, share: float, seed: int) -> tuple[TensorImages, TensorImages]:
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(share * len(y))
    return TensorImages(x[order[:cut]], y[order[:cut]]), TensorImages(x[order[cut:]], y[order[cut:]])


def pick(front: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The searched architecture: the best supernet accuracy of the front, the dearer of a tie."""
    return max(front, key=lambda f: (f["supernet_accuracy"], f["cost"])) if front else None


def measured_with(args: argparse.Namespace, target: float) -> dict[str, Any]:
    """What a seed's result depends on: a kept result is reused only when these match."""
    return {"dataset": args.dataset, "train_share": args.train_share, "rounds": args.rounds, "k": args.k,
            "epochs": args.epochs, "samples": args.samples, "train_epochs": args.train_epochs,
            "randoms": args.randoms, "target_ms": target}


def one_seed(seed: int, args: argparse.Namespace, table: Table, x: torch.Tensor, y: torch.Tensor, target: float,
             out: Path) -> dict[str, Any]:
    train, test = split(x, y, args.train_share, seed)
    # hwnas's practical defaults with this script's sizes; config.json records each setting's source
    cfg, sources = layered("latency", None, None, None,
                           {"metric": "latency", "target": target, "rounds": args.rounds, "k": args.k,
                            "epochs": args.epochs, "samples": args.samples, "seed": seed, "checkpoint_every": 1000})
    run = out / f"run_{seed}"
    t0 = time.perf_counter()
    result = search(table, train, cfg, run, resume=(run / "checkpoint.pt").exists(), progress=not args.quiet,
                    setting_sources=sources)
    searched_s = time.perf_counter() - t0
    chosen = pick(result.front)
    record: dict[str, Any] = {"seed": seed, "measured_with": measured_with(args, target), "train": len(train),
                              "test": len(test), "search_s": round(searched_s, 1), "rounds": result.rounds,
                              "searched": None, "random": [], "budgets": {}}
    if chosen is None:  # no architecture met the constraint: nothing to compare, said so
        return record
    arch = catalog_from_dict(json.loads((run / chosen["file"]).read_text()), chosen["file"]).networks[chosen["arch"]]
    others = [random_like(table, chosen["latency_ms"], random.Random(seed * 1000 + j)) for j in range(args.randoms)]
    others = [a for a in others if a is not None]
    record["searched"] = {"arch": chosen["arch"], "latency_ms": chosen["latency_ms"],
                          "supernet_accuracy": chosen["supernet_accuracy"]}
    record["random"] = [{"latency_ms": predict(table, a)["latency_ms"]} for a in others]
    t0 = time.perf_counter()
    for epochs in args.train_epochs:  # every network trained anew at each budget
        def accuracy(a: Any) -> float:
            return train_standalone(a, train, test.images, test.labels, epochs, seed)

        searched, randoms = accuracy(arch), [accuracy(a) for a in others]
        mean_random = statistics.fmean(randoms) if randoms else None
        record["budgets"][str(epochs)] = {"searched": searched, "random": randoms, "random_mean": mean_random,
                                          "difference": None if mean_random is None else searched - mean_random}
    record["train_s"] = round(time.perf_counter() - t0, 1)
    return record


def paired_statistics(searched: list[float], random_mean: list[float]) -> dict[str, Any]:
    """Mean difference with its 95% confidence interval (t), the paired t-test and the Wilcoxon
    signed-rank test (two-sided) over the seeds."""
    try:
        from scipy import stats
    except ImportError:
        sys.exit("the paired tests need scipy: pip install scipy")
    diffs = [a - b for a, b in zip(searched, random_mean)]
    n = len(diffs)
    out: dict[str, Any] = {"seeds": n, "mean_difference": statistics.fmean(diffs) if n else None,
                           "wins": sum(d > 0 for d in diffs), "losses": sum(d < 0 for d in diffs)}
    if n >= 2:
        sd = statistics.stdev(diffs)
        half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        out.update(sd=sd, ci95=[out["mean_difference"] - half, out["mean_difference"] + half],
                   t_test_p=float(stats.ttest_rel(searched, random_mean).pvalue) if sd > 0 else None)
        if any(diffs):
            out["wilcoxon_p"] = float(stats.wilcoxon(diffs).pvalue)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", required=True, help="folder for the table, the runs and report.json")
    ap.add_argument("--seeds", type=int, default=10, help="seeds, each its own split and search (at least 5 for "
                                                         "the tests to mean much)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--dataset", choices=["digits", "synthetic"], default="digits")
    ap.add_argument("--train-share", type=float, default=0.3, help="of the images, for the search and training")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=10, help="supernet epochs per round")
    ap.add_argument("--samples", type=int, default=100, help="D, drawn per retrieval")
    ap.add_argument("--train-epochs", type=int, nargs="+", default=[4, 10], metavar="E",
                    help="training budgets: every compared network is trained from scratch for each of these "
                         "numbers of epochs, and each budget gets its own statistics (default 4 10: at 4 epochs "
                         "small networks are still starting to learn on this data, at 10 they are past it)")
    ap.add_argument("--randoms", type=int, default=3, help="random architectures per searched one")
    ap.add_argument("--target-quantile", type=float, default=0.3)
    ap.add_argument("--table", help="a latency table of the digits8 macro-architecture to use instead of building one")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    x, y = digits(RESOLUTION) if args.dataset == "digits" else synthetic()
    if args.table:
        table, build_s = Table.load(args.table), None
    else:
        table, build_s = latency_table(out, RESOLUTION)
    target, _ = latency_target(table, args.target_quantile, 0)
    seeds = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        path = out / f"seed_{seed}.json"
        if path.exists():
            kept = json.loads(path.read_text())
            if kept.get("measured_with") != measured_with(args, target):
                sys.exit(f"{path} was measured with other settings ({kept.get('measured_with')}): choose another "
                         f"output folder, or delete it to measure again")
            seeds.append(kept)
            continue
        seeds.append(one_seed(seed, args, table, x, y, target, out))
        path.write_text(json.dumps(seeds[-1], indent=1) + "\n")
        print(json.dumps({"seed": seed, "search_s": seeds[-1]["search_s"],
                          "difference": {e: b["difference"] for e, b in seeds[-1]["budgets"].items()}}), flush=True)
    statistics_by_budget = {}
    for epochs in map(str, args.train_epochs):
        paired = [s["budgets"][epochs] for s in seeds if s["budgets"].get(epochs, {}).get("difference") is not None]
        statistics_by_budget[epochs] = paired_statistics([b["searched"] for b in paired],
                                                         [b["random_mean"] for b in paired])
    report = {"args": vars(args), "table_build_s": build_s, "target_ms": target, "seeds": seeds,
              "statistics": statistics_by_budget,
              "unpaired_seeds": [s["seed"] for s in seeds if s["searched"] is None or not s["random"]],
              "seconds": round(time.perf_counter() - started, 1)}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"{args.dataset} at {RESOLUTION}x{RESOLUTION}, {args.train_share:.0%} for training; target {target} ms")
    print("| seed | searched ms | random ms | epochs | searched accuracy | random accuracies | difference |\n"
          "|---|---|---|---|---|---|---|")
    for s in seeds:
        if s["searched"] is None:
            print(f"| {s['seed']} | no architecture met the constraint | - | - | - | - | - |")
            continue
        random_ms = ", ".join(f"{r['latency_ms']:.3f}" for r in s["random"]) or "none found"
        for epochs, b in s["budgets"].items():
            diff = "-" if b["difference"] is None else f"{b['difference']:+.3f}"
            print(f"| {s['seed']} | {s['searched']['latency_ms']:.3f} | {random_ms} | {epochs} | {b['searched']:.3f} | "
                  + ", ".join(f"{a:.3f}" for a in b["random"]) + f" | {diff} |")
    for epochs, st in statistics_by_budget.items():
        if st["seeds"] < 2:
            continue
        p, w = st.get("t_test_p"), st.get("wilcoxon_p")
        print(f"{epochs} epochs: mean difference {st['mean_difference']:+.4f} (95% CI {st['ci95'][0]:+.4f}.."
              f"{st['ci95'][1]:+.4f}) over {st['seeds']} seeds; {st['wins']} wins, {st['losses']} losses; paired "
              f"t-test p = {'-' if p is None else f'{p:.3g}'}, Wilcoxon p = {'-' if w is None else f'{w:.3g}'}")
    print(f"{report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
