"""Fitness indicators: one theta per branch per layer, p = sigmoid(theta), theta_0 = 0.

The probability of a layer configuration g is p_hat_g = prod_n (g_n p_n + (1 - g_n)(1 - p_n)).
Two configurations g_a, g_b are sampled; their probabilities rescaled to sum to one
(p~_a = p_hat_a / (p_hat_a + p_hat_b)); which also cancels the normalisation of R/E cells'
non-empty conditioning. theta is not in the forward graph, so the simulated gradient of
NSE (Ci et al., ICCV 2021) is produced by a surrogate output whose value is o_a and whose derivative in theta is
o_a dp~_a/dtheta + o_b dp~_b/dtheta (`simulated_output`): a stock optimizer updates theta
from `.backward()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hwnas.supernet.cell import sample_config


def config_log_prob(theta: torch.Tensor, config: torch.Tensor) -> torch.Tensor:
    """log p_hat_g, differentiable in theta (log-sigmoid for stability)."""
    logp = nn.functional.logsigmoid(theta)
    log1mp = nn.functional.logsigmoid(-theta)
    return torch.where(config, logp, log1mp).sum()


@dataclass
class PairSample:
    """Two sampled configurations of one layer and their rescaled probabilities."""

    config_a: torch.Tensor
    config_b: torch.Tensor
    p_a: torch.Tensor  # p~_a, differentiable in theta
    p_b: torch.Tensor


class FitnessIndicators(nn.Module):
    """One learnable theta per branch of every layer (p = sigmoid(theta), theta = 0 at the start);
    `sample_pairs()` draws the two configurations per layer that the simulated gradient uses."""

    def __init__(self, branches_per_layer: Sequence[int], needs_branch: Sequence[bool]):
        super().__init__()
        self.thetas = nn.ParameterList(nn.Parameter(torch.zeros(n)) for n in branches_per_layer)
        self.needs_branch = list(needs_branch)

    def probabilities(self, layer: int) -> torch.Tensor:
        return torch.sigmoid(self.thetas[layer])

    def sample_pair(self, layer: int, generator: torch.Generator | None = None) -> PairSample:
        theta = self.thetas[layer]
        p = torch.sigmoid(theta).detach()
        a = sample_config(len(theta), self.needs_branch[layer], generator, p)
        b = sample_config(len(theta), self.needs_branch[layer], generator, p)
        la, lb = config_log_prob(theta, a), config_log_prob(theta, b)
        pa, pb = torch.softmax(torch.stack([la, lb]), 0)  # p_hat_a / (p_hat_a + p_hat_b), stably
        return PairSample(a, b, pa, pb)

    def sample_pairs(self, generator: torch.Generator | None = None) -> list[PairSample]:
        return [self.sample_pair(i, generator) for i in range(len(self.thetas))]


def simulated_output(o_a: torch.Tensor, o_b: torch.Tensor, pair: PairSample) -> torch.Tensor:
    """Value o_a; gradient to weights through o_a; to theta: o_a dp~_a + o_b dp~_b (NSE)."""
    pa, pb = pair.p_a, pair.p_b
    return o_a + (pa - pa.detach()) * o_a.detach() + (pb - pb.detach()) * o_b.detach()
