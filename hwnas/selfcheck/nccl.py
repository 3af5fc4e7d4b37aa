"""Two GPUs: two processes over NCCL, whose batch norms over the global batch
(hwnas/supernet/global_bn.py) must give what one process gives on the whole batch.

Launched as the data-parallel tests launch their CPU processes (torch.multiprocessing, a file
store), one process per GPU. Each rank takes its half of the batch through one training step
(forward, the mean over its items of a weighted sum, backward; weight gradients averaged over the
ranks as DDP does); this process takes the whole batch on GPU 0. Two layers: a convolution and a
GlobalBatchNorm2d in float64 (only the order of summation differs: 1e-9), and the fused
multi-branch layer in float32, whose kernel normalises with the global statistics and returns
their gradients (float32 over several layers: 1e-4).
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import torch
from torch import nn

from hwnas.selfcheck.tolerance import Comparison, compare

WORLD = 2
PROBLEMS = ("batch norm", "fused layer")


def problem(name: str, device: torch.device) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The layer, a batch of 8 and per-item loss weights (of the output's shape): the same in every
    process."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(1)
        if name == "batch norm":
            net: nn.Module = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)).double()
            x = torch.randn(8, 4, 6, 6, generator=gen, dtype=torch.float64)
            out_channels = 8
        else:
            from hwnas.spaces import builtin
            from hwnas.spaces.macro import Position
            from hwnas.supernet.cell import SupernetCell
            from hwnas.supernet.fused import FusedSupernetCell

            cell = SupernetCell(builtin().spaces["latency19"], [0, 4, 9], Position("N", 8, 8, 8, 1))
            net = FusedSupernetCell(cell, inplace=False)
            x = torch.randn(8, 8, 8, 8, generator=gen)
            out_channels = 8  # a normal cell keeps its shape
        w = torch.randn(8, out_channels, x.shape[2], x.shape[3], generator=gen, dtype=x.dtype)
    return net.to(device), x.to(device), w.to(device)


def _forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    cell = getattr(net, "cell", None)
    if cell is not None:  # the fused layer, every branch on, its kernels called directly
        from hwnas.supernet.fused import fused_forward

        return fused_forward(cell, x, [True] * len(cell.branches), inplace=False)
    return net(x)


def step(net: nn.Module, x: torch.Tensor, w: torch.Tensor) -> dict[str, torch.Tensor]:
    x = x.clone().requires_grad_()
    y = _forward(net, x)
    (y * w).flatten(1).sum(1).mean().backward()
    out = {"output": y.detach(), "input gradient": x.grad}
    out.update({f"grad {k}": p.grad for k, p in net.named_parameters() if p.grad is not None})
    out.update({k: b for k, b in net.named_buffers() if b.is_floating_point()})
    return {k: v.cpu() for k, v in out.items() if v is not None}


def _worker(rank: int, store: str, folder: str, backend: str, device_type: str, sync: bool) -> None:
    from hwnas.selfcheck.cell import exact_convolutions
    from hwnas.supernet.global_bn import set_world

    if device_type == "cuda":
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(1)
    torch.distributed.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=WORLD,
                                         timeout=timedelta(seconds=60))
    try:
        device = torch.device(device_type, rank) if device_type == "cuda" else torch.device("cpu")
        for name in PROBLEMS:
            net, x, w = problem(name, device)
            if sync:  # (not: each process's batch norms on its share only, the negative control)
                set_world(net, WORLD)
            with exact_convolutions():
                got = step(net, x.chunk(WORLD)[rank], w.chunk(WORLD)[rank])
            for key, value in got.items():
                if key.startswith("grad "):  # DDP's average of the ranks' weight gradients
                    t = value.to(device)
                    torch.distributed.all_reduce(t)
                    got[key] = (t / WORLD).cpu()
            torch.save(got, Path(folder) / f"{name.replace(' ', '_')}.{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def check_global_bn(folder: Path, timeout_s: float = 120.0, backend: str = "nccl", device_type: str = "cuda",
                    sync: bool = True) -> list[Comparison]:
    """Two processes (NCCL, one GPU each) against this one on the whole batch. backend gloo with
    device_type cpu runs the same on CPU processes; sync=False leaves each process's batch norms
    on its own share (which must fail)."""
    from hwnas.errors import HwnasError
    from hwnas.selfcheck.cell import exact_convolutions

    context = torch.multiprocessing.spawn(_worker, args=(str(folder / "store"), str(folder), backend, device_type, sync),
                                          nprocs=WORLD, join=False)
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=1.0):  # raises when a process failed, with its traceback
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise HwnasError(f"the {WORLD} {backend} processes did not finish within {timeout_s:.0f} s")
    found = []
    device = torch.device(device_type, 0) if device_type == "cuda" else torch.device("cpu")
    for name in PROBLEMS:
        net, x, w = problem(name, device)
        with exact_convolutions():
            ref = step(net, x, w)
        parts = [torch.load(folder / f"{name.replace(' ', '_')}.{r}.pt") for r in range(WORLD)]
        dtype = x.dtype
        for key, want in ref.items():
            if key in ("output", "input gradient"):
                got = torch.cat([p[key] for p in parts])
                if key == "input gradient":  # each rank's loss reaches the other's inputs through the
                    got = got / WORLD        # statistics: its gradient is of the sum of the ranks' losses
            else:
                got = parts[0][key]
                found.append(compare(f"{name}: {key} of rank 1 vs rank 0", parts[1][key], got, dtype, gradient=True))
            found.append(compare(f"{name}: {key}", got, want, dtype, gradient=True))
    return found


def why_not() -> str | None:
    """None when two processes over NCCL can run here, else why not."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < WORLD:
        return f"needs {WORLD} CUDA GPUs, the machine has {count}"
    if not torch.distributed.is_available() or not torch.distributed.is_nccl_available():
        return "this torch has no NCCL (torch.distributed.is_nccl_available() is False)"
    return None
