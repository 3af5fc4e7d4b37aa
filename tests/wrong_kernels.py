"""Kernels that return wrong values, injected where hwnas calls its kernels (hwnas.kernels.ops._run):
the negative controls of the self-check and of the fused layer's first-use check. CPU only.

After the real kernel has run, one value of what it wrote is moved by `delta`: the first element
of its output (forward: the first segment's output block; grad_input_bn: dL/dh, written over its
input; the others: the tensor argument that holds their result)."""

from __future__ import annotations

import ctypes
from typing import Any

import torch

from hwnas.kernels import ops

# kernel -> where its result is: "block" (forward's output), "input" (written over the input),
# or the index of the tensor argument
RESULT: dict[str, Any] = {"forward": "block", "grad_input": 1, "grad_weight": 0, "channel_stats": 0,
                          "grad_input_bn": "input"}


def perturb(name: str, tensors: list[Any], table: Any, delta: float) -> None:
    where = RESULT[name]
    if isinstance(where, int):
        with torch.no_grad():
            tensors[where].view(-1)[0] += delta
        return
    address = table.seg[0].out_block if where == "block" else table.seg[0].in_block
    value = (ctypes.c_double if tensors[0].dtype == torch.float64 else ctypes.c_float).from_address(address)
    value.value += delta


def inject(monkeypatch: Any, kernel: str, delta: float = 1e-2) -> None:
    """From now on (until monkeypatch undoes it), `kernel` returns one wrong value per call."""
    assert kernel in RESULT
    real = ops._run

    def wrong(name: str, tensors: Any, table: Any, impl: str, total: int | None = None,
              grid: int | None = None) -> None:
        real(name, tensors, table, impl, total, grid)
        if name == kernel:
            perturb(name, list(tensors), table, delta)

    monkeypatch.setattr(ops, "_run", wrong)
