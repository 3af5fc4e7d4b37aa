"""Pareto retrieval (NSE, Ci et al., ICCV 2021, Sec. 3.3): architectures sampled from P(theta),
priced by the table, evaluated on the supernet's shared weights after recalibrating their batch
norm statistics on training images, and the Pareto front of (cost, accuracy).

An architecture here is a configuration of the supernet: per layer a bool tensor over its
current branches. `Candidate` keeps it with the op indices it selects, its price and accuracy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hwnas.search.evaluation import Moments
from hwnas.search.pareto import pareto_front
from hwnas.supernet.cell import sample_config
from hwnas.supernet.costs import CostModel
from hwnas.supernet.fitness import FitnessIndicators
from hwnas.supernet.network import Supernet


@dataclass
class Candidate:
    ops: list[list[int]]  # per layer, the op indices (of the space) it uses
    cost: float  # in the metric's units, as `hwnas predict` reports (latency calibrated)
    kind: str = "sample"  # sample, edge, previous (the previous round's front, re-evaluated)
    accuracy: float | None = None

    @property
    def key(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(sorted(o)) for o in self.ops)

    def to_dict(self) -> dict[str, Any]:
        return {"ops": self.ops, "cost": self.cost, "kind": self.kind, "accuracy": self.accuracy}


def configs_of(ops: Sequence[Sequence[int]], layer_ops: Sequence[Sequence[int]]) -> list[torch.Tensor] | None:
    """The supernet configuration that selects `ops`, or None when an op is no longer a branch."""
    out = []
    for want, have in zip(ops, layer_ops):
        if any(op not in have for op in want):
            return None
        out.append(torch.tensor([op in want for op in have], dtype=torch.bool))
    return out


def ops_of(configs: Sequence[torch.Tensor], layer_ops: Sequence[Sequence[int]]) -> list[list[int]]:
    return [[op for op, on in zip(have, c.tolist()) if on] for c, have in zip(configs, layer_ops)]


@dataclass
class Sampler:
    """Draws configurations from P(theta) and prices them with the table."""

    fitness: FitnessIndicators
    costs: CostModel
    layer_ops: list[list[int]]
    seen: set[Any] = field(default_factory=set)
    draws: int = 0  # configurations drawn, repeats included

    def price(self, configs: Sequence[torch.Tensor]) -> float:
        return self.costs.cost(configs)  # in the metric's units, as `hwnas predict` reports

    def draw(self, generator: torch.Generator) -> tuple[list[torch.Tensor], float]:
        configs = [sample_config(len(t), nb, generator, torch.sigmoid(t.detach().cpu()))
                   for t, nb in zip(self.fitness.thetas, self.fitness.needs_branch)]
        return configs, self.price(configs)

    def sample(self, count: int, accept: Any, kind: str, generator: torch.Generator,
               max_draws: int) -> list[Candidate]:
        """Up to `count` distinct architectures (distinct also from those drawn before by this
        sampler) whose price satisfies `accept`, in at most `max_draws` draws."""
        out: list[Candidate] = []
        for _ in range(max_draws):
            if len(out) >= count:
                break
            configs, cost = self.draw(generator)
            self.draws += 1
            if not accept(cost):
                continue
            cand = Candidate(ops_of(configs, self.layer_ops), cost, kind)
            if cand.key in self.seen:
                continue
            self.seen.add(cand.key)
            out.append(cand)
        return out


def _batch_norms(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_bn(net: Supernet, configs: Sequence[torch.Tensor], batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   device: torch.device | str = "cpu") -> None:
    """Set every batch norm's running mean and variance to the statistics of its inputs over all
    the given training images, as the network sees them in training mode (each batch normalised
    by its own statistics): exact population mean, unbiased variance."""
    bns = _batch_norms(net)
    moments: dict[nn.Module, Moments] = {}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        moments.setdefault(module, Moments()).add(inputs[0])

    handles = [bn.register_forward_pre_hook(hook) for bn in bns]
    fused, net.fused = net.fused, False  # the eager path: one hook per branch BN
    was_training = net.training
    net.train()
    try:
        dtype = next(net.parameters()).dtype
        for x, _ in batches:
            net(x.to(device, dtype), configs)
    finally:
        for h in handles:
            h.remove()
        net.fused = fused
        net.train(was_training)
    for module, m in moments.items():
        bn: Any = module
        mean, var = m.finish(bn.running_mean.dtype)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)


@torch.no_grad()
def accuracy(net: Supernet, configs: Sequence[torch.Tensor], batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device | str = "cpu") -> float:
    net.eval()
    fused, net.fused = net.fused, False
    correct = total = 0
    try:
        dtype = next(net.parameters()).dtype
        for x, y in batches:
            pred = net(x.to(device, dtype), configs).argmax(1).cpu()
            correct += int((pred == y).sum())
            total += len(y)
    finally:
        net.fused = fused
    return correct / max(total, 1)


def evaluate(net: Supernet, configs: Sequence[torch.Tensor], calibration: Iterable[tuple[torch.Tensor, torch.Tensor]],
             held_out: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device | str = "cpu") -> float:
    """Held-out accuracy after recalibrating BN; the supernet's own BN buffers are restored.

    One architecture at a time, all of the network per calibration batch: the reference that
    `hwnas.search.evaluation.evaluate_all` (the search's path) equals bit for bit."""
    saved = {k: v.clone() for k, v in net.state_dict().items() if "running_" in k or "num_batches" in k}
    try:
        recalibrate_bn(net, configs, calibration, device)
        return accuracy(net, configs, held_out, device)
    finally:
        net.load_state_dict(saved, strict=False)


def front_of(candidates: Sequence[Candidate]) -> list[Candidate]:
    scored = [c for c in candidates if c.accuracy is not None]
    return [scored[i] for i in pareto_front([(c.cost, float(c.accuracy)) for c in scored])]  # type: ignore[arg-type]
