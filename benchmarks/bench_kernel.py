"""The mixed-depthwise kernel alone vs PyTorch's depthwise convolutions (forward + backward).

One segment per branch of a latency19 cell (dw k3/k5/k7 x t1/t3/t6 mix, hidden = cin * T),
batch 16, timed interleaved with the latency-table protocol; speedups are ratios of medians.

    python benchmarks/bench_kernel.py [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys

import torch

from hwnas.kernels import SegmentSpec, mixed_depthwise, reference_mixed_depthwise
from hwnas.profiling.protocol import CallRunner, Protocol, measure_interleaved

BRANCHES = [(3, 3), (5, 3), (7, 3), (3, 6), (5, 1)]  # (kernel, expansion)
SHAPES = [(64, 28, 1), (64, 28, 2), (128, 14, 1)]  # (cin, resolution, stride)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    rows = []
    for cin, res, stride in SHAPES:
        segs = [SegmentSpec(cin * t, k, 1, stride) for k, t in BRANCHES]
        x = torch.randn(16, sum(s.channels for s in segs), res, res, requires_grad=True)
        weights = [torch.randn(s.channels, s.kernel, s.kernel, requires_grad=True) for s in segs]
        flat = torch.cat([w.reshape(-1) for w in weights]).detach().requires_grad_()

        def ours() -> None:
            torch.stack([o.sum() for o in mixed_depthwise(x, flat, segs)]).sum().backward()

        # torch gets each branch's input as its own contiguous tensor, as in the eager cell (slices
        # of the concatenated tensor would send it down a slower path)
        parts = [p.detach().contiguous().requires_grad_() for p in x.split([s.channels for s in segs], dim=1)]

        def torch_convs() -> None:
            torch.stack([o.sum() for part, w, s in zip(parts, weights, segs)
                         for o in reference_mixed_depthwise(part, [w], [s])]).sum().backward()

        stats = measure_interleaved({"kernel": CallRunner(ours), "torch": CallRunner(torch_convs)},
                                    Protocol(warmup_ms=200, min_sample_ms=0, rounds=args.rounds),
                                    random.Random(0))
        rows.append({"shape": f"cin{cin}-{res}x{res}-s{stride}", "kernel_ms": round(stats["kernel"].median, 2),
                     "torch_ms": round(stats["torch"].median, 2),
                     "speedup": round(stats["torch"].median / stats["kernel"].median, 3)})
        if not args.json:
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        print(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
