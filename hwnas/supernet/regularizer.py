"""The differentiable resource regularizer: Loss = CE + penalty(C), C taken through the two
sampled configurations of every layer so that it is differentiable in theta:

    C ~ fixed + sum_l (p~_a,l C(g_a,l) + p~_b,l C(g_b,l))

Forms (tau is the target, in the cost model's units):
- nse:    alpha * |C - tau| ** beta       (the paper's; beta = 2 squares C - tau, as its code)
- nss:    alpha * |C / tau - 1| ** beta   (Network Space Search)
- linear: alpha * C                       (AutoSpace / ProxylessNAS style, alpha = lambda)
- fbnet:  alpha * log(C) ** beta          (FBNet)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hwnas.errors import HwnasError
from hwnas.supernet.costs import CostModel
from hwnas.supernet.fitness import FitnessIndicators, PairSample

FORMS = ("nse", "nss", "linear", "fbnet")
# The paper's constants per metric: alpha, beta, tau (ms per batch of 16 on its GPU; MFLOPs).
PAPER_CONSTANTS = {"latency": (2e-2, 2.0, 7.0), "macs": (1e-5, 2.0, 300.0)}


class ResourceRegularizer(nn.Module):
    def __init__(self, model: CostModel, target: float, form: str = "nse", alpha: float | None = None,
                 beta: float | None = None):
        super().__init__()
        if form not in FORMS:
            raise HwnasError(f"unknown regularizer form '{form}'; choose one of {', '.join(FORMS)}")
        if target <= 0:
            raise HwnasError(f"the target must be positive, got {target}")
        paper_alpha, paper_beta, _ = PAPER_CONSTANTS[model.metric]
        self.model, self.target, self.form = model, float(target), form
        self.alpha = paper_alpha if alpha is None else float(alpha)
        self.beta = paper_beta if beta is None else float(beta)

    def sampled_cost(self, pairs: Sequence[PairSample]) -> torch.Tensor:
        total = torch.tensor(self.model.fixed, dtype=torch.float64)
        for layer, pair in zip(self.model.layers, pairs):
            total = total + pair.p_a * layer.cost(pair.config_a) + pair.p_b * layer.cost(pair.config_b)
        return total

    def penalty(self, cost: torch.Tensor) -> torch.Tensor:
        tau, a, b = self.target, self.alpha, self.beta
        if self.form == "nse":
            return a * (cost - tau).abs() ** b
        if self.form == "nss":
            return a * (cost / tau - 1).abs() ** b
        if self.form == "linear":
            return a * cost
        return a * torch.log(cost) ** b

    def forward(self, pairs: Sequence[PairSample]) -> torch.Tensor:
        return self.penalty(self.sampled_cost(pairs))

    def expected_cost(self, fitness: FitnessIndicators) -> torch.Tensor:
        """Exact E[C] under the current theta (for logging and calibration)."""
        return self.model.expected([fitness.probabilities(i).double() for i in range(len(fitness.thetas))])
