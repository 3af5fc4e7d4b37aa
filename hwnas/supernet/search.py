"""Optimising theta against the regularizer alone (`hwnas search --dry-run`).

No data, no weights: the tool for choosing alpha, beta and tau before spending GPU days.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import torch

from hwnas.errors import HwnasError

from hwnas.profiling.table import Table
from hwnas.spaces.macro import Position
from hwnas.supernet.costs import cost_model
from hwnas.supernet.fitness import FitnessIndicators
from hwnas.supernet.regularizer import DEFAULT_ALPHA_SCALING, DEFAULT_OUTER, ResourceRegularizer, constants


# Defaults shared by dry_run and the CLI: NSE's K for latency, a learning rate that
# reaches targets within 50-120% of the start in about 50 steps (docs/measured.md).
DEFAULT_K = 6
DEFAULT_LR = 0.2
# Adam's betas for theta. The second moment remembers about 1 / (1 - beta2) steps: with the
# usual 0.999, the large gradients of the start (E[C] far from the target) keep Adam's steps
# small long after the gradient has shrunk near the target, and a far target is approached
# slowly (from NSENet-GPU's MACs, 21% of the uniform start: 5-7% off after 400 steps); a memory
# of about 10 steps keeps the step size matched to the current gradient (measured: within 0.4%
# by 150 steps, docs/measured.md).
THETA_BETAS = (0.9, 0.9)


def theta_lr_factor(step: int, total: int) -> float:
    """The fitness indicators' learning rate at `step` of `total`, as a factor of the base rate:
    cosine decay (Adam's steps have a fixed size, so without decay theta keeps oscillating
    around the target by about the learning rate)."""
    return 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


def supernet_layers(table: Table, k: int | None, seed: int) -> list[tuple[Position, list[int]]]:
    """Every cell slot of the table's macro with its candidate ops: all of the space, or K of them
    drawn per layer (NSE's subsets have K = 6 for latency, 5 for FLOPs)."""
    space, macro = table.space(), table.macro()
    rng = random.Random(seed)
    n = len(space.ops)
    layers = []
    for slot in macro.slots(float(table.meta["scale"])):
        ops = list(range(n)) if k is None or k >= n else sorted(rng.sample(range(n), k))
        layers.append((slot.position, ops))
    return layers


def dry_run(table: Table, metric: str, target: float, form: str = "nse", alpha: float | None = None,
            beta: float | None = None, steps: int = 400, lr: float = DEFAULT_LR, k: int | None = DEFAULT_K,
            seed: int = 0, record_every: int = 10, pairs_per_step: int = 1, outer: str = DEFAULT_OUTER,
            alpha_scaling: str = DEFAULT_ALPHA_SCALING) -> dict[str, Any]:
    """Optimise theta against the regularizer alone (no data, no weights) and report the trajectory
    of E[C] (`hwnas search --dry-run`): the tool for choosing alpha, beta and the target. alpha and
    beta default as in the search (`constants`: NSE's, the nse form's alpha scaled to the target
    as `alpha_scaling` says)."""
    layers = supernet_layers(table, k, seed)
    model = cost_model(table, layers, metric, stem_and_head=True)
    alpha, beta = constants(metric, form, target, alpha, beta, alpha_scaling)
    reg = ResourceRegularizer(model, target, form, alpha, beta, outer)
    fitness = FitnessIndicators([len(ops) for _, ops in layers], [pos.cell_type != "N" for pos, _ in layers])
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(fitness.parameters(), lr=lr, betas=THETA_BETAS)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: theta_lr_factor(i, steps))
    initial = reg.expected_cost(fitness)
    trajectory: list[dict[str, float]] = [{"step": 0, "expected": initial}]
    for step in range(1, steps + 1):
        # NSE's estimator, averaged over independent pairs to lower its variance.
        loss = sum(reg(fitness.sample_pairs(gen), fitness) for _ in range(pairs_per_step)) / pairs_per_step
        opt.zero_grad()
        loss.backward()
        if not (torch.isfinite(loss) and all(bool(torch.isfinite(t.grad).all()) for t in fitness.thetas
                                              if t.grad is not None)):
            # An overflowed penalty would turn theta into NaN (and sampling a non-empty cell from
            # NaN probabilities never ends): refuse instead.
            raise HwnasError(f"the penalty overflowed at step {step} (alpha {reg.alpha}, beta {reg.beta}, target "
                             f"{target}, E[C] {trajectory[-1]['expected']:.4g}): use a smaller --alpha or --beta "
                             f"or a target nearer the reachable costs")
        opt.step()
        sched.step()
        if step % record_every == 0 or step == steps:
            trajectory.append({"step": step, "expected": reg.expected_cost(fitness), "penalty": float(loss.detach())})
    final = trajectory[-1]["expected"]
    return {
        "metric": metric, "unit": model.unit, "form": form, "alpha": reg.alpha, "beta": reg.beta,
        "target": target, "steps": steps, "lr": lr, "seed": seed, "pairs_per_step": pairs_per_step, "k": k,
        "outer": outer, "alpha_scaling": alpha_scaling, "initial_expected": initial,
        "final_expected": final, "relative_error": (final - target) / target,
        "fixed_cost": model.fixed, "min_cost": model.fixed + _extreme(model.layers, min),
        "max_cost": model.fixed + _extreme(model.layers, max), "trajectory": trajectory,
        "probabilities": [[round(float(p), 4) for p in torch.sigmoid(t.detach())] for t in fitness.thetas],
        "layer_ops": [ops for _, ops in layers],
    }


def _extreme(layers: Sequence[Any], pick: Any) -> float:
    """Cheapest/dearest reachable cost (normal cells may be empty, R/E need one branch)."""
    total = 0.0
    for layer in layers:
        if pick is min:
            total += 0.0 if layer.identity else float(layer.branches.min())
        else:
            n = len(layer.branches)
            total += float(layer.branches.sum()) + layer.merge(n)
    return total
