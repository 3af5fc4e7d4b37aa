"""The differentiable resource regularizer: Loss = CE + penalty(C), C taken through the two
sampled configurations of every layer so that it is differentiable in theta:

    C ~ fixed + sum_l (p~_a,l C(g_a,l) + p~_b,l C(g_b,l))

Forms (tau is the target, in the cost model's units: calibrated ms per batch for latency, as
`hwnas predict` reports it; millions of MACs per image):
- nse:    alpha * |C - tau| ** beta       (NSE, Ci et al., ICCV 2021; beta = 2 squares C - tau,
                                          as its code)
- nss:    alpha * |C / tau - 1| ** beta   (Network Space Search, Hsu et al.)
- linear: alpha * C                       (AutoSpace, Zhou et al., ICCV 2021; ProxylessNAS, Cai
                                          et al., ICLR 2019; alpha = lambda)
- fbnet:  alpha * log(C) ** beta          (FBNet, Wu et al., CVPR 2019)

`outer`: how the penalty's derivative is taken.
- "expected" (the default, in the API and the CLI): value penalty(E[C]), gradient
  penalty'(E[C]) * dC/dtheta, with E[C] exact from the table. Same differentiable estimate C,
  no correlated factor: E[C] settles on tau.
- "sampled" (NSE's literal form): penalty(C), C the two-configuration estimate. Its fixed
  point is biased: the random factor (C - tau) correlates with dC/dtheta, and E[C] settles a
  few percent away from tau (docs/measured.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hwnas.errors import HwnasError
from hwnas.supernet.costs import CostModel
from hwnas.supernet.fitness import FitnessIndicators, PairSample

FORMS = ("nse", "nss", "linear", "fbnet")
OUTER = ("expected", "sampled")
DEFAULT_OUTER = "expected"
# NSE's constants per metric: alpha, beta, tau (ms per batch of 16 on its GPU; MFLOPs).
PAPER_CONSTANTS = {"latency": (2e-2, 2.0, 7.0), "macs": (1e-5, 2.0, 300.0)}
# How the nse form's default alpha meets a target other than NSE's: "relative" weighs the
# penalty as a function of C / tau, alpha_NSE * (tau_NSE / tau) ** beta (NSE's weight at any
# target's scale); "fixed" takes NSE's alpha as it is (its literal constant).
ALPHA_SCALINGS = ("relative", "fixed")
DEFAULT_ALPHA_SCALING = "relative"


def constants(metric: str, form: str, target: float, alpha: float | None = None, beta: float | None = None,
              scaling: str = DEFAULT_ALPHA_SCALING) -> tuple[float, float]:
    """alpha and beta as a regularizer takes them: those given, else NSE's for the metric; for the
    nse form, NSE's alpha scaled to the target as `scaling` says."""
    if scaling not in ALPHA_SCALINGS:
        raise HwnasError(f"unknown alpha scaling '{scaling}'; choose one of {', '.join(ALPHA_SCALINGS)}")
    paper_alpha, paper_beta, tau_nse = PAPER_CONSTANTS[metric]
    beta = paper_beta if beta is None else float(beta)
    if alpha is not None:
        return float(alpha), beta
    if form == "nse" and scaling == "relative":
        return float(paper_alpha * (tau_nse / target) ** beta), beta
    return paper_alpha, beta


class ResourceRegularizer(nn.Module):
    """penalty(C) for a supernet's sampled configuration pairs; `forward(pairs, fitness)`.

    costs: the cost model of the supernet's layers (`cost_model`); target: tau in its units;
    alpha, beta: default to NSE's constants for the cost model's metric.
    """

    def __init__(self, costs: CostModel, target: float, form: str = "nse", alpha: float | None = None,
                 beta: float | None = None, outer: str = DEFAULT_OUTER):
        super().__init__()
        if not isinstance(costs, CostModel):
            raise TypeError(f"costs must be a CostModel (hwnas.cost_model(table, layers, metric, ...)), "
                            f"got {type(costs).__name__}")
        if outer not in OUTER:
            raise HwnasError(f"unknown outer derivative '{outer}'; choose expected or sampled")
        self.outer = outer
        if form not in FORMS:
            raise HwnasError(f"unknown regularizer form '{form}'; choose one of {', '.join(FORMS)}")
        if target <= 0:
            raise HwnasError(f"the target must be positive, got {target}")
        paper_alpha, paper_beta, _ = PAPER_CONSTANTS[costs.metric]
        self.costs, self.target, self.form = costs, float(target), form
        self.alpha = paper_alpha if alpha is None else float(alpha)
        self.beta = paper_beta if beta is None else float(beta)

    def sampled_cost(self, pairs: Sequence[PairSample]) -> torch.Tensor:
        """The two-configuration estimate of C, differentiable in theta."""
        if len(pairs) != len(self.costs.layers):
            raise ValueError(f"{len(pairs)} configuration pairs for {len(self.costs.layers)} priced layers")
        total = torch.tensor(self.costs.fixed, dtype=torch.float64)
        for layer, pair in zip(self.costs.layers, pairs):
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

    def forward(self, pairs: Sequence[PairSample], fitness: FitnessIndicators | None = None) -> torch.Tensor:
        sampled = self.sampled_cost(pairs)
        if self.outer == "sampled":
            return self.penalty(sampled)
        if fitness is None:
            raise ValueError("outer='expected' needs the fitness indicators (for the exact E[C]): "
                             "call regularizer(pairs, fitness), or build it with outer='sampled'")
        with torch.no_grad():
            expected = self._expected(fitness)
        expected.requires_grad_()
        value = self.penalty(expected)
        (slope,) = torch.autograd.grad(value, expected)
        return value.detach() + slope * (sampled - sampled.detach())

    def expected_cost(self, fitness: FitnessIndicators) -> float:
        """Exact E[C] under the current theta, as a number (for logging). Its differentiable form is
        `costs.expected(probabilities)`."""
        with torch.no_grad():
            return float(self._expected(fitness))

    def _expected(self, fitness: FitnessIndicators) -> torch.Tensor:
        return self.costs.expected([fitness.probabilities(i).double() for i in range(len(fitness.thetas))])
