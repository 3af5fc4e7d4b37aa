"""A deterministic profiling backend for tests: a graph takes `overhead_ms` plus 1 ms per million
multiply-accumulates of its convolutions and linear layers (counted by forward hooks), so a table
built with it can be checked exactly."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

import hwnas


def mmacs(module: nn.Module, shapes: Sequence[tuple[int, ...]]) -> float:
    """Millions of multiply-accumulates of the module's Conv2d and Linear layers on inputs of `shapes`,
    counted from shapes alone: the module is moved to the meta device, where nothing is computed."""
    total = 0

    def count(m: nn.Module, _: Any, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        else:
            total += out.numel() * m.in_features

    hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            module.to("meta").eval()(*[torch.empty(s, device="meta") for s in shapes])
    finally:
        for h in hooks:
            h.remove()
    return total / 1e6


class FlopRunner(hwnas.Runner):
    def __init__(self, module: nn.Module, shapes: Sequence[tuple[int, ...]], overhead_ms: float):
        self.ms = overhead_ms + mmacs(module, shapes)

    def run(self, iterations: int) -> float:
        return iterations * self.ms


class FlopBackend(hwnas.Backend):
    """Every graph pays `overhead_ms` once per run (a boundary cost), plus its MACs."""

    name = "flops-model"
    overhead_ms = 1.0

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": "1", "precision": self.precision, "threads": None,
                "device": {"type": "model", "overhead_ms": self.overhead_ms}, "software": {}}

    def load(self, module: nn.Module, input_shapes: Sequence[tuple[int, ...]]) -> hwnas.Runner:
        return FlopRunner(module, input_shapes, self.overhead_ms)


class PureFlopBackend(FlopBackend):
    """Almost no boundary cost: a whole network takes the sum of its parts' times."""

    name = "pure-flops-model"
    overhead_ms = 1e-4
