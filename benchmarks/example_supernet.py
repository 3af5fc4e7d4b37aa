"""End-to-end example: a small supernet searched on synthetic data with the resource regularizer.

Alternates weight steps (every branch Bernoulli(0.5)) and theta steps (every second step, as in
NSE, Ci et al., ICCV 2021; two sampled configurations, simulated gradient, penalty from the latency table), and
prints the loss and the expected latency E[C]. Runs on the CPU in a minute or two at its
default size; CI runs it tiny (tests/test_search.py).

    python benchmarks/example_supernet.py [--steps 60] [--table TABLE.json] [--fused]

Without --table it builds a latency table of the tiny space (tests/data/tiny.json) with the
ort backend first.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from hwnas.profiling.backends import get_backend
from hwnas.profiling.build import build_table
from hwnas.profiling.protocol import Protocol
from hwnas.profiling.table import Table
from hwnas.spaces import resolve_macro, resolve_space
from hwnas.supernet.costs import cost_model
from hwnas.supernet.fitness import FitnessIndicators
from hwnas.supernet.network import Supernet, theta_step, weight_step
from hwnas.supernet.regularizer import ResourceRegularizer

TINY = Path(__file__).resolve().parents[1] / "tests" / "data" / "tiny.json"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--table", help="a latency table of the tiny space (built if omitted)")
    ap.add_argument("--target-fraction", type=float, default=0.6, help="target = this x the initial E[C]")
    ap.add_argument("--fused", action="store_true", help="use the fused multi-branch layer")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    if args.table:
        table = Table.load(args.table)
    else:
        path = Path(tempfile.mkdtemp()) / "tiny_latency.json"
        quick = Protocol(warmup_ms=5, warmup_runs=1, min_sample_ms=1, rounds=3, network_rounds=3,
                         calibration_architectures=2)
        table = build_table(resolve_space(str(TINY)), resolve_macro(str(TINY)), 1.0, get_backend("ort"), 2, path,
                            protocol=quick, progress=False)
    space, macro = table.space(), table.macro()
    slots = macro.slots(1.0)
    layer_ops = [list(range(len(space.ops))) for _ in slots]
    net = Supernet(space, macro, 1.0, layer_ops, fused=args.fused)
    fitness = FitnessIndicators([len(o) for o in layer_ops], [s.position.cell_type != "N" for s in slots])
    model = cost_model(table, [(s.position, o) for s, o in zip(slots, layer_ops)], "latency", stem_and_head=True)
    with torch.no_grad():
        initial = float(model.expected([torch.sigmoid(t) for t in fitness.thetas]))
    target = args.target_fraction * initial
    # alpha scaled so the penalty is of the order of the cross-entropy at the start
    reg = ResourceRegularizer(model, target=target, form="nse", alpha=10.0 / target ** 2, beta=2.0, outer="expected")
    w_opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    t_opt = torch.optim.Adam(fitness.parameters(), lr=0.1)
    # synthetic data: 10 classes, each a fixed random pattern plus noise
    patterns = torch.randn(10, 3, macro.input, macro.input, generator=gen)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 10, (args.batch,), generator=gen)
        return patterns[y] + 0.5 * torch.randn(args.batch, 3, macro.input, macro.input, generator=gen), y

    history = []
    for step in range(1, args.steps + 1):
        x, y = batch()
        ce = weight_step(net, w_opt, x, y, gen)
        penalty = None
        if step % 2 == 0:  # theta every second weight step, on held-out ("validation") data
            ce_val, penalty = theta_step(net, fitness, reg, t_opt, *batch(), gen)
        with torch.no_grad():
            expected = float(reg.expected_cost(fitness))
        history.append({"step": step, "ce": ce, "penalty": penalty, "expected_latency_ms": expected})
        if not args.json:
            print(f"step {step:3d}  CE {ce:.3f}  E[latency] {expected:.4f} ms (target {reg.target:.4f})"
                  + (f"  penalty {penalty:.2e}" if penalty is not None else ""), flush=True)
    result = {"initial_expected_ms": initial, "final_expected_ms": history[-1]["expected_latency_ms"],
              "target_ms": reg.target, "first_ce": history[0]["ce"], "last_ce": history[-1]["ce"], "steps": args.steps}
    print(json.dumps(result, indent=2) if args.json else json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
