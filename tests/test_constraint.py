"""The retrieval's constraint on constructed fronts (no supernet): NSE's interval and its edge
samples against the edging effect, the plain budget, and the settings that choose them."""

from __future__ import annotations

import json
import random

import pytest

from hwnas.errors import HwnasError
from hwnas.search import SearchConfig, aggregate
from hwnas.search.config import PRESETS, layered, preset_settings, setting_sources
from hwnas.search.constraint import Constraint, Drawn, constrained_front, previous_front
from hwnas.search.retrieval import Candidate, front_of


def cand(cost, accuracy, kind="sample", ops=None):
    return Candidate(ops if ops is not None else [[int(cost * 10)]], cost, kind, accuracy)


def points(front):
    return [(c.cost, c.accuracy) for c in front]


INTERVAL = Constraint("interval", 100.0, margin=0.1, edge_margin=0.1)  # [100, 110], edge [90, 100)


def test_edge_samples_remove_a_false_pareto_point_at_the_boundary():
    accepted = [cand(101, 0.50), cand(105, 0.70), cand(109, 0.72)]
    edge = [cand(98, 0.60, "edge")]
    # Without edge samples the cheapest accepted point looks Pareto-optimal: nothing cheaper was
    # evaluated (the edging effect; this is the check's negative control).
    assert points(constrained_front(accepted, INTERVAL)) == [(101, 0.50), (105, 0.70), (109, 0.72)]
    # The edge sample just below the interval dominates it (cheaper and more accurate): removed.
    # The edge sample itself is never on the front.
    assert points(constrained_front(accepted + edge, INTERVAL)) == [(105, 0.70), (109, 0.72)]
    # An edge sample that dominates nothing changes nothing.
    assert points(constrained_front(accepted + [cand(97, 0.40, "edge")], INTERVAL)) == [(101, 0.50), (105, 0.70),
                                                                                        (109, 0.72)]


def test_the_edging_effect_is_corrected():
    """Architectures priced around the interval, accuracy growing with cost plus noise too small for
    anything cheaper than the edge band to dominate a point of the interval: the front of those
    within it, evaluated with the edge samples, is exactly the true Pareto front (over all of them)
    within the interval. Without the edge samples it usually holds false points at the lower end."""
    with_false_points = 0
    for seed in range(20):
        rng = random.Random(seed)
        everything = [cand(c, 0.5 + 0.002 * c + rng.uniform(-0.01, 0.01)) for c in
                      (rng.uniform(70, 115) for _ in range(300))]
        inside = [c for c in everything if INTERVAL.satisfied(c.cost)]
        edge = [Candidate(c.ops, c.cost, "edge", c.accuracy) for c in everything if INTERVAL.edge(c.cost)]
        assert inside and edge and len(inside) + len(edge) < len(everything)  # some neither: never sampled
        true_front = [c for c in front_of(everything) if INTERVAL.satisfied(c.cost)]
        corrected = constrained_front(inside + edge, INTERVAL)
        assert points(corrected) == points(true_front)
        assert all(c.kind == "sample" for c in corrected)
        false_points = set(points(constrained_front(inside, INTERVAL))) - set(points(true_front))
        assert all(cost < 105 for cost, _ in false_points)  # the edging effect, at the lower end
        with_false_points += bool(false_points)
    assert with_false_points >= 15


def test_over_budget_architectures_never_reach_the_next_subset():
    """The dearer architectures are the more accurate ones, as often on a supernet: the unconstrained
    front holds them, but only architectures within the constraint are aggregated."""
    budget = Constraint("budget", 100.0)
    within = [cand(90, 0.60, ops=[[0], [1]]), cand(99, 0.65, ops=[[0], [2]])]
    over = [cand(104, 0.70, ops=[[3], [4]]), cand(130, 0.80, ops=[[5], [6]])]
    assert {c.cost for c in front_of(within + over)} == {90, 99, 104, 130}  # negative control
    front = constrained_front(within + over, budget)
    assert points(front) == [(90, 0.60), (99, 0.65)]
    assert aggregate([c.ops for c in front], 2) == [[0], [1, 2]]  # no op of the dearer architectures
    for mode in ("budget", "interval"):  # the previous front is re-evaluated only within the constraint
        constraint = Constraint(mode, 95.0)
        drawn = Drawn()

        class Prices:  # a sampler pricing op 0 at 90, op 1 at 104
            seen: set = set()

            @staticmethod
            def price(configs):
                return 90.0 if bool(configs[0][0]) else 104.0  # op 0: 90, op 1: 104

        old = [Candidate([[0]], 90.0, "previous"), Candidate([[1]], 104.0, "previous")]
        previous_front(drawn, Prices(), old, constraint, [[0, 1]])  # type: ignore[arg-type]
        kept = [c.cost for c in drawn.candidates]
        assert kept == ([90.0] if mode == "budget" else [104.0])


def test_constraint_modes():
    budget = Constraint("budget", 10.0)
    assert budget.satisfied(10.0) and budget.satisfied(0.1) and not budget.satisfied(10.01)
    assert not budget.has_edge and not any(budget.edge(c) for c in (8.0, 9.99, 10.0, 11.0))
    interval = Constraint("interval", 10.0, margin=0.2, edge_margin=0.05)
    assert interval.satisfied(10.0) and interval.satisfied(12.0) and not interval.satisfied(9.99)
    assert not interval.satisfied(12.01)
    assert interval.edge(9.5) and interval.edge(9.99) and not interval.edge(10.0) and not interval.edge(9.49)
    assert json.loads(json.dumps(interval.to_dict()))["edge"] == [9.5, 10.0]
    with pytest.raises(ValueError, match="budget, interval"):
        Constraint("window", 1.0)


def test_settings_choose_the_constraint_and_its_edge_samples():
    assert SearchConfig(target=1.0).check().edge_samples == 0  # budget: none
    cfg = SearchConfig(target=1.0, constraint="interval", samples=400).check()
    assert cfg.edge_samples == 20  # D / 20, NSE's 100 of 2000
    assert SearchConfig(target=1.0, constraint="interval", samples=5).check().edge_samples == 1
    with pytest.raises(HwnasError, match="edge_samples .* need the interval constraint"):
        SearchConfig(target=1.0, edge_samples=10).check()
    with pytest.raises(HwnasError, match="constraint must be one of budget, interval"):
        SearchConfig(target=1.0, constraint="below").check()
    assert SearchConfig(target=1.0, metric="macs").check().k == 5 and SearchConfig(target=1.0).check().k == 6


def test_preset_and_layers_record_each_source(tmp_path):
    paper = preset_settings("nse-paper", "macs")
    assert paper["k"] == 5 and preset_settings("nse-paper", "latency")["k"] == 6
    assert (paper["lr"], paper["batch"], paper["epochs"], paper["warmup_epochs"]) == (0.4, 1024, 100, 2.0)
    assert (paper["theta_lr"], paper["samples"], paper["edge_samples"], paper["threshold"]) == (0.1, 2000, 100, -2.0)
    assert (paper["eval_images"], paper["bn_images"], paper["constraint"]) == (50000, 20000, "interval")
    assert (paper["outer"], paper["alpha_scaling"]) == ("sampled", "fixed")
    cfg, sources = layered("macs", "nse-paper", {"epochs": 3, "lr": 0.2}, "c.yaml",
                           {"metric": "macs", "target": 300.0, "lr": 0.3})
    assert (cfg.epochs, cfg.lr, cfg.batch, cfg.momentum, cfg.k) == (3, 0.3, 1024, 0.9, 5)
    assert sources["epochs"] == "config file c.yaml" and sources["lr"] == "command line"
    assert sources["batch"] == "preset nse-paper" and sources["eval_batch"] == "default"
    assert sources["target"] == "command line" and set(sources) == set(cfg.to_dict())
    plain, plain_sources = layered("latency", None, None, None, {"metric": "latency", "target": 2.0})
    assert plain.constraint == "budget" and plain_sources["constraint"] == "default"
    assert plain_sources["k"] == "default" and plain_sources["edge_samples"] == "default"
    given = setting_sources(SearchConfig(target=2.0, k=3, lr=0.5))
    assert given["k"] == given["lr"] == "given" and given["batch"] == "default"
    with pytest.raises(HwnasError, match="unknown preset 'nse'.*nse-paper"):
        layered("macs", "nse", None, None, {"metric": "macs", "target": 1.0})
    assert set(PRESETS) == {"nse-paper"}
