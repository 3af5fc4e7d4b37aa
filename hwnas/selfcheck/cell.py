"""The fused multi-branch layer (hwnas/supernet/fused.py) against the eager SupernetCell.

A normal and a reduction cell of depthwise branches of several kernel sizes and expansions beside
an unfused branch, every branch on: one training step (output, input gradient, every parameter's
gradient, the running statistics) and then an eval forward, the fused layer called directly (not
through the first-use check). Both paths run in the same dtype on the same device; TF32 is off
meanwhile, so that cuDNN's convolutions of the two paths round alike.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch

from hwnas.selfcheck.tolerance import Comparison, compare

DTYPES = {"cpu": (torch.float64, torch.float32), "cuda": (torch.float32,)}
# (cell type, cin, cout, resolution, stride, ops of latency19): dw k3 t1, dw k5 t3, dw k7 t6, dense
# conv t1; and dw k3 t3, dw k5 t1, dw k7 t3, spatially separable k5 t1 at stride 2
CELLS = ((("N", 8, 8, 12, 1), (0, 4, 8, 9)), (("R", 8, 16, 12, 2), (1, 3, 7, 13)))


@contextlib.contextmanager
def exact_convolutions() -> Iterator[None]:
    """cuDNN without TF32 (its default for fp32 convolutions rounds inputs to 10 bits)."""
    cudnn = torch.backends.cudnn
    with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                     allow_tf32=False):
        matmul = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = matmul


def check_cell(device: torch.device, dtype: torch.dtype) -> list[Comparison]:
    from hwnas.spaces import builtin
    from hwnas.spaces.macro import Position
    from hwnas.supernet.cell import SupernetCell
    from hwnas.supernet.fused import fused_forward

    space = builtin().spaces["latency19"]
    found: list[Comparison] = []
    with exact_convolutions(), torch.enable_grad(), torch.random.fork_rng(devices=[]):
        for (kind, cin, cout, res, stride), ops in CELLS:
            torch.manual_seed(0)  # parameters drawn from torch's generator, restored after
            eager = SupernetCell(space, ops, Position(kind, cin, cout, res, stride)).to(device, dtype).train()
            fused = copy.deepcopy(eager)
            gen = torch.Generator().manual_seed(1)
            x = torch.randn(4, cin, res, res, generator=gen).to(device, dtype)
            upstream = torch.randn(4, cout, res // stride, res // stride, generator=gen).to(device, dtype)
            config = [True] * len(ops)
            x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
            y1, y2 = eager(x1, config), fused_forward(fused, x2, config)
            (y1 * upstream).sum().backward()
            (y2 * upstream).sum().backward()
            where = f" [{kind} cell {cin}->{cout}, stride {stride}]"

            def add(what: str, got: torch.Tensor, want: torch.Tensor) -> None:
                # several layers deep: every quantity gets the gradients' tolerance
                found.append(compare(what + where, got, want, dtype, gradient=True))

            add("output", y2, y1)
            add("input gradient", x2.grad, x1.grad)  # type: ignore[arg-type]
            for (name, p1), p2 in zip(eager.named_parameters(), fused.parameters()):
                if p1.grad is not None or p2.grad is not None:
                    add(f"grad {name}", p2.grad if p2.grad is not None else torch.full_like(p2, float("nan")),
                        p1.grad if p1.grad is not None else torch.zeros_like(p1))
            for (name, b1), b2 in zip(eager.named_buffers(), fused.buffers()):
                if b1.is_floating_point():
                    add(name, b2, b1)
            with torch.no_grad():
                add("eval output", fused_forward(fused.eval(), x, config), eager.eval()(x, config))
    return found
