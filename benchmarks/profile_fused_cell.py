"""Where the fused cell's time goes on the CPU, and the measurements behind its design choices.

    python benchmarks/profile_fused_cell.py [--threads 2] [--json]

At the N-64-28 position of bench_multibranch.py (batch 16, latency19's dw_k3_t3, dw_k5_t3,
dw_k7_t3, dw_k3_t6, dw_k5_t1 and dual_k3_t1, all active):
  profile   one fused forward + backward under torch.profiler, self CPU time by kind of op
  bn2       BN2 + ReLU of the five depthwise branches, forward + backward: through the kernel
            (1x1 segments of unit weight) vs torch's batch norm + ReLU
  expand    the five expand 1x1 convolutions, forward + backward: one conv over the concatenated
            weights vs one per branch
  pages     a 51 MB tensor: allocated and filled (fresh pages above glibc's mmap threshold) vs
            an existing one filled
The timed parts run interleaved with the latency tables' protocol; figures are medians.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

from hwnas.model.blocks import is_fusable_depthwise
from hwnas.profiling.protocol import CallRunner, Protocol, measure_interleaved
from hwnas.spaces import builtin
from hwnas.spaces.macro import Position
from hwnas.supernet import SupernetCell
from hwnas.supernet.fused import FusedSupernetCell, bn_relu

OPS = [1, 4, 7, 2, 3, 11]  # bench_multibranch.py's: five depthwise branches and a dense one
POSITION = Position("N", 64, 64, 28, 1)
BATCH = 16


def interleaved(variants: dict[str, Callable[[], Any]]) -> dict[str, float]:
    stats = measure_interleaved({k: CallRunner(v) for k, v in variants.items()}, Protocol(rounds=15), random.Random(0))
    return {k: round(s.median, 2) for k, s in stats.items()}


def cell() -> tuple[SupernetCell, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    ref = SupernetCell(builtin().spaces["latency19"], OPS, POSITION).train()
    x = torch.randn(BATCH, POSITION.cin, POSITION.resolution, POSITION.resolution)
    return ref, x, torch.ones(len(OPS), dtype=torch.bool)


def kind(name: str, shapes: list[Any]) -> str:
    """The kind of a profiled op: what the docs' breakdown names. The custom ops' work shows
    under their autograd wrappers (GeneratedBackwardFor_<op>_default, and ...Backward for the
    backward)."""
    backward = " backward" if "backward" in name.removeprefix("GeneratedBackwardFor_").lower() else ""
    if "mixed_depthwise" in name:
        return "kernel calls (depthwise with BN1; BN2)" + backward
    if name in ("aten::mkldnn_convolution", "aten::convolution_backward"):
        weight = shapes[2 if backward else 1] if len(shapes) > 2 else []  # backward: (grad, input, weight, ...)
        one = len(weight) == 4 and weight[2:] == [1, 1]
        return ("1x1 convolutions (expand, projections)" if one else "dense 3x3 convolutions (dual branch)") + backward
    if "batch_norm" in name:
        return "batch norms (BN3, dense branch)" + backward
    return "other (mean, ReLU, copies, autograd)" + backward


def profile() -> dict[str, float]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    ref, x, config = cell()
    fused = FusedSupernetCell(ref)
    for _ in range(3):  # warm-up
        fused(x, config).sum().backward()
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fused(x, config).sum().backward()
    out: dict[str, float] = {}
    for event in prof.key_averages(group_by_input_shape=True):
        if event.self_cpu_time_total <= 0:
            continue
        k = kind(event.key, event.input_shapes)
        out[k] = out.get(k, 0.0) + event.self_cpu_time_total / 1e3
    out["total"] = sum(out.values())
    return {k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def bn2() -> dict[str, float]:
    ref, x, _ = cell()
    blocks = [b for b in ref.branches if is_fusable_depthwise(b)]
    ys = [torch.randn(BATCH, b.bn2.num_features, POSITION.resolution, POSITION.resolution) for b in blocks]
    grads = [torch.randn_like(y) for y in ys]

    def kernel() -> None:
        inputs = [y.clone().requires_grad_() for y in ys]
        outs = bn_relu(inputs, [b.bn2 for b in blocks], True, inplace=True)  # as the fused layer trains
        torch.autograd.backward(outs, grads)

    def torch_ops() -> None:
        inputs = [y.clone().requires_grad_() for y in ys]
        outs = [F.relu(b.bn2(y)) for b, y in zip(blocks, inputs)]
        torch.autograd.backward(outs, grads)

    def copies() -> None:  # the clones both variants make, to subtract
        for y in ys:
            y.clone()

    t = interleaved({"kernel": kernel, "torch": torch_ops, "clones": copies})
    return {"kernel_ms": round(t["kernel"] - t["clones"], 2), "torch_ms": round(t["torch"] - t["clones"], 2)}


def expand() -> dict[str, float]:
    ref, x, _ = cell()
    weights = [b.expand.weight for b in ref.branches if is_fusable_depthwise(b)]
    x = x.requires_grad_()

    def one() -> None:
        F.conv2d(x, torch.cat(weights)).sum().backward()

    def per_branch() -> None:
        sum(F.conv2d(x, w).sum() for w in weights).backward()  # type: ignore[union-attr]

    t = interleaved({"one": one, "per_branch": per_branch})
    channels = sum(int(w.shape[0]) for w in weights)
    return {"channels": channels, "one_conv_ms": t["one"], "per_branch_ms": t["per_branch"]}


def pages() -> dict[str, float]:
    shape = (BATCH, 1024, 28, 28)  # 51 MB of float32
    existing = torch.empty(shape)
    t = interleaved({"fresh": lambda: torch.empty(shape).fill_(1.0), "existing": lambda: existing.fill_(1.0)})
    return {"mb": round(existing.numel() * 4 / 1e6, 1), "allocate_and_fill_ms": t["fresh"],
            "fill_existing_ms": t["existing"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    result = {"threads": args.threads, "profile_ms": profile(), "bn2": bn2(), "expand": expand(),
              "pages": pages()}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    from tabulate import tabulate

    print(f"one fused forward + backward at {POSITION.key}, batch {BATCH}, {args.threads} threads (self CPU time)")
    print(tabulate(list(result["profile_ms"].items()), ["kind", "ms"], tablefmt="github"))
    b, e, g = result["bn2"], result["expand"], result["pages"]
    print(f"\nBN2 + ReLU, forward + backward: {b['kernel_ms']} ms through the kernel, {b['torch_ms']} ms with torch's")
    print(f"expand to {e['channels']} channels, forward + backward: {e['one_conv_ms']} ms as one conv, "
          f"{e['per_branch_ms']} ms per branch")
    print(f"{g['mb']} MB: {g['allocate_and_fill_ms']} ms to allocate and fill, {g['fill_existing_ms']} ms to fill "
          f"an existing tensor")


if __name__ == "__main__":
    os.environ.setdefault("HWNAS_FUSED", "force")  # time the fused kernels themselves: no check, no fallback
    main()
