"""Supernet cell, fitness indicators, regularizer: against enumeration, finite differences, autograd."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from hwnas.spaces import builtin
from hwnas.spaces.macro import Position
from hwnas.supernet import (FitnessIndicators, LayerCosts, ResourceRegularizer, SupernetCell, sample_config,
                            simplify, simplify_layer, simulated_output)
from hwnas.supernet.costs import CostModel
from hwnas.supernet.fitness import PairSample, config_log_prob

SPACE = builtin().spaces["latency19"]


@pytest.fixture(autouse=True)
def float64_default():
    """Double precision for this module's checks (finite differences), restored afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def all_configs(k: int, needs_branch: bool):
    for bits in itertools.product([False, True], repeat=k):
        if any(bits) or not needs_branch:
            yield torch.tensor(bits)


# --- the cell -----------------------------------------------------------------------------

@pytest.mark.parametrize("cell_type,cin,cout,stride", [("N", 8, 8, 1), ("R", 8, 16, 2)])
def test_cell_is_the_mean_of_active_branches_plus_identity(cell_type, cin, cout, stride):
    torch.manual_seed(0)
    cell = SupernetCell(SPACE, [0, 4, 9, 13], Position(cell_type, cin, cout, 10, stride)).eval()
    x = torch.randn(2, cin, 10, 10)
    for config in all_configs(4, cell_type != "N"):
        outs = [b(x) for b, on in zip(cell.branches, config) if on]
        if cell_type == "N":
            outs.append(x)
        expected = sum(outs) / len(outs)
        torch.testing.assert_close(cell(x, config), expected)


def test_cell_rejects_bad_configs():
    cell = SupernetCell(SPACE, [0, 1], Position("R", 8, 16, 8, 2))
    with pytest.raises(ValueError, match="needs at least one active branch"):
        cell(torch.randn(1, 8, 8, 8), torch.tensor([False, False]))
    with pytest.raises(ValueError, match=r"bool tensor of shape \(2,\)"):
        cell(torch.randn(1, 8, 8, 8), torch.tensor([1, 0]))


def test_sampling_never_empties_a_reduction_cell():
    gen = torch.Generator().manual_seed(0)
    assert all(sample_config(2, True, gen).any() for _ in range(300))
    assert any(not sample_config(2, False, gen).any() for _ in range(300))


# --- probabilities and the expected cost ------------------------------------------------------

def test_config_probability_matches_the_product():
    theta = torch.tensor([0.3, -1.2, 2.0])
    p = torch.sigmoid(theta)
    for config in all_configs(3, False):
        direct = math.prod(float(pn if g else 1 - pn) for g, pn in zip(config, p))
        assert math.exp(float(config_log_prob(theta, config))) == pytest.approx(direct, rel=1e-12)


@pytest.mark.parametrize("identity", [True, False])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_expected_cost_by_exhaustive_enumeration(identity, k):
    gen = torch.Generator().manual_seed(k)
    layer = LayerCosts(torch.rand(k, generator=gen) * 10, merge_add=0.3, merge_scale=0.2, identity=identity)
    p = torch.rand(k, generator=gen)
    weights, costs = [], []
    for config in all_configs(k, layer.needs_branch):
        weights.append(math.prod(float(pn if g else 1 - pn) for g, pn in zip(config, p)))
        costs.append(float(layer.cost(config)))
    exact = sum(w * c for w, c in zip(weights, costs)) / sum(weights)  # conditioned for R/E
    assert float(layer.expected(p)) == pytest.approx(exact, rel=1e-12)


def test_expected_cost_gradient_by_finite_differences():
    layer = LayerCosts(torch.tensor([1.0, 4.0, 2.5]), 0.3, 0.2, identity=False)
    theta = torch.tensor([0.2, -0.7, 1.1], requires_grad=True)
    layer.expected(torch.sigmoid(theta)).backward()
    eps = 1e-6
    for i in range(3):
        d = torch.zeros(3)
        d[i] = eps
        fd = (layer.expected(torch.sigmoid(theta.detach() + d)) - layer.expected(torch.sigmoid(theta.detach() - d)))
        assert float(theta.grad[i]) == pytest.approx(float(fd) / (2 * eps), rel=1e-6)


# --- the regularizer --------------------------------------------------------------------------

def tiny_model(seed=0, k=3, layers=2):
    gen = torch.Generator().manual_seed(seed)
    return CostModel("latency", tuple(LayerCosts(torch.rand(k, generator=gen) * 5 + 1, 0.2, 0.1, identity=i % 2 == 0)
                                      for i in range(layers)), fixed=2.0)


def pair_from(theta: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> PairSample:
    pa, pb = torch.softmax(torch.stack([config_log_prob(theta, a), config_log_prob(theta, b)]), 0)
    return PairSample(a, b, pa, pb)


@pytest.mark.parametrize("form", ["nse", "nss", "linear", "fbnet"])
def test_regularizer_gradient_by_finite_differences(form):
    model = tiny_model()
    reg = ResourceRegularizer(model, target=7.0, form=form, alpha=0.5, beta=2.0, outer="sampled")
    thetas = [torch.tensor([0.4, -0.3, 1.0]), torch.tensor([-1.0, 0.5, 0.2])]
    configs = [(torch.tensor([True, False, True]), torch.tensor([False, True, True])),
               (torch.tensor([True, True, False]), torch.tensor([False, False, True]))]

    def penalty(ts):
        return reg([pair_from(t, a, b) for t, (a, b) in zip(ts, configs)])

    params = [t.clone().requires_grad_() for t in thetas]
    penalty(params).backward()
    eps = 1e-6
    for li in range(2):
        for i in range(3):
            plus = [t.clone() for t in thetas]
            minus = [t.clone() for t in thetas]
            plus[li][i] += eps
            minus[li][i] -= eps
            fd = (float(penalty(plus)) - float(penalty(minus))) / (2 * eps)
            # abs: where a branch is on (or off) in both configs its gradient is exactly 0 and the
            # difference quotient is rounding noise, |penalty| * 1e-16 / eps
            assert float(params[li].grad[i]) == pytest.approx(fd, rel=1e-5, abs=1e-6)


def test_simulated_gradient_is_the_briefs_formula():
    theta = torch.tensor([0.3, -0.4], requires_grad=True)
    a, b = torch.tensor([True, False]), torch.tensor([False, True])
    pair = pair_from(theta, a, b)
    o_a, o_b = torch.randn(5), torch.randn(5)
    upstream = torch.randn(5)  # dL/do
    out = simulated_output(o_a, o_b, pair)
    torch.testing.assert_close(out, o_a)  # the forward value is o_a
    (out * upstream).sum().backward()
    dpa = torch.autograd.grad(pair_from(theta, a, b).p_a, theta)[0]
    dpb = torch.autograd.grad(pair_from(theta, a, b).p_b, theta)[0]
    expected = (upstream @ o_a) * dpa + (upstream @ o_b) * dpb
    torch.testing.assert_close(theta.grad, expected)


def estimator_gradient(model, thetas, configs):
    """Gradient in theta of the two-configuration resource term for given sampled configs."""
    params = [t.clone().requires_grad_() for t in thetas]
    total = sum(p.p_a * layer.cost(p.config_a) + p.p_b * layer.cost(p.config_b)
                for layer, p in zip(model.layers, (pair_from(t, a, b) for t, (a, b) in zip(params, configs))))
    grads = torch.autograd.grad(total, params)
    return torch.cat(grads)


def exact_estimator_expectation(model, thetas):
    """E over (g_a, g_b) of the estimator's gradient, by enumerating every pair of configurations."""
    per_layer = []
    for layer, theta in zip(model.layers, thetas):
        p = torch.sigmoid(theta)
        configs = list(all_configs(len(theta), layer.needs_branch))
        prob = torch.stack([torch.exp(config_log_prob(theta, c)) for c in configs])
        prob = prob / prob.sum()
        g = torch.zeros(len(theta))
        for (ca, pa), (cb, pb) in itertools.product(zip(configs, prob), repeat=2):
            g += pa * pb * estimator_gradient(CostModel("latency", (layer,), 0.0), [theta], [(ca, cb)])
        per_layer.append(g)
        del p
    return torch.cat(per_layer)


def exact_expected_cost_gradient(model, thetas):
    params = [t.clone().requires_grad_() for t in thetas]
    return torch.cat(torch.autograd.grad(model.expected([torch.sigmoid(t) for t in params]), params))


def test_estimator_at_init_is_half_the_exact_gradient():
    """At theta = 0 every configuration is equally likely, p~_a = p~_b = 1/2, and the estimator's
    expectation is E[(1/4)(s_a - s_b)(C_a - C_b)] = (1/2) dE[C]/dtheta exactly (up to the R/E
    conditioning, which the rescaling cancels)."""
    model = tiny_model(k=3, layers=2)
    thetas = [torch.zeros(3), torch.zeros(3)]
    torch.testing.assert_close(exact_estimator_expectation(model, thetas),
                               0.5 * exact_expected_cost_gradient(model, thetas))


def test_estimator_monte_carlo_matches_its_exact_expectation_and_points_downhill():
    """Statistical check: the mean of 4000 sampled estimates is within 4 standard errors of the
    exact expectation (a false alarm has probability < 1e-4 per coordinate for a normal mean),
    and that expectation has a positive inner product with the exact gradient of E[C]."""
    model = tiny_model(seed=3, k=3, layers=2)
    thetas = [torch.tensor([0.8, -0.5, 0.1]), torch.tensor([-0.3, 1.2, -1.0])]
    fitness = FitnessIndicators([3, 3], [layer.needs_branch for layer in model.layers])
    with torch.no_grad():
        for param, t in zip(fitness.thetas, thetas):
            param.copy_(t)
    gen = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(4000):
        pairs = fitness.sample_pairs(gen)
        samples.append(estimator_gradient(model, thetas, [(p.config_a, p.config_b) for p in pairs]))
    stack = torch.stack(samples)
    mean, se = stack.mean(0), stack.std(0) / math.sqrt(len(samples))
    exact = exact_estimator_expectation(model, thetas)
    assert torch.all((mean - exact).abs() <= 4 * se + 1e-12), (mean, exact, se)
    assert float(exact @ exact_expected_cost_gradient(model, thetas)) > 0


def test_penalty_estimate_follows_the_exact_penalty_gradient():
    """alpha (C - tau)^2 through the pair estimate vs the exact gradient of alpha (E[C] - tau)^2:
    far above the target both must point the same way (cosine > 0.9 over 4000 samples)."""
    model = tiny_model(seed=5, k=3, layers=3)
    reg = ResourceRegularizer(model, target=4.0, form="nse", alpha=1.0, beta=2.0, outer="sampled")
    fitness = FitnessIndicators([3, 3, 3], [layer.needs_branch for layer in model.layers])
    gen = torch.Generator().manual_seed(1)
    total = torch.zeros(9)
    for _ in range(4000):
        fitness.zero_grad()
        reg(fitness.sample_pairs(gen)).backward()
        total += torch.cat([t.grad for t in fitness.thetas])
    params = [torch.zeros(3, requires_grad=True) for _ in range(3)]
    exact_pen = (model.expected([torch.sigmoid(t) for t in params]) - 4.0) ** 2
    exact = torch.cat(torch.autograd.grad(exact_pen, params))
    cosine = float(total @ exact / (total.norm() * exact.norm()))
    assert cosine > 0.9


# --- simplification ---------------------------------------------------------------------------

def test_simplify_lock_and_rehearse():
    theta = torch.tensor([-3.0, 0.5, -2.5, -1.0])
    assert simplify_layer([4, 7, 9, 12], theta, needs_branch=False) == [7, 12]
    assert simplify_layer([4, 7, 9, 12], theta, needs_branch=False, locked=[9]) == [7, 9, 12]
    assert simplify_layer([4, 7, 9, 12], theta, needs_branch=False, threshold=1.0) == []  # N may empty


def test_simplify_never_empties_a_reduction_cell():
    theta = torch.tensor([-5.0, -3.0, -4.0])
    assert simplify_layer([1, 2, 3], theta, needs_branch=True) == [2]  # the best of the dropped
    out = simplify([[1, 2, 3], [5, 6]], [theta, torch.tensor([-9.0, -8.0])], [False, True])
    assert out == [[], [6]]
