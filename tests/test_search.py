"""`hwnas search --dry-run`: E[C] reaches the target; the CLI's JSON; the example composes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from hwnas.cli.main import main
from hwnas.profiling.table import Table
from hwnas.supernet import FitnessIndicators, ResourceRegularizer
from hwnas.supernet.search import dry_run

from conftest import REPO

SHIPPED = REPO / "latency_tables" / "latency19_ort-cpu_b16.json"


@pytest.mark.parametrize("fraction", [0.5, 0.8, 1.2])
def test_dry_run_reaches_macs_target(latency19_macs, fraction):
    start = dry_run(latency19_macs, "macs", 1.0, steps=1)["initial_expected"]
    result = dry_run(latency19_macs, "macs", fraction * start, steps=400, beta=2.0)
    assert abs(result["relative_error"]) <= 0.02
    assert result["final_expected"] == pytest.approx(result["trajectory"][-1]["expected"])


def test_dry_run_reaches_a_far_target(latency19_macs):
    """From the uniform start to NSENet-GPU's MACs (about a fifth of the start) in 400 steps."""
    from hwnas.profiling.predict import predict
    from hwnas.spaces import builtin

    target = predict(latency19_macs, builtin().networks["nsenet_gpu"])["macs"] / 1e6
    result = dry_run(latency19_macs, "macs", target, steps=400)
    assert target / result["initial_expected"] < 0.25
    assert abs(result["relative_error"]) <= 0.02


def test_sampled_outer_settles_off_a_far_target(latency19_macs):
    """NSE's literal form (the penalty's derivative at the sampled cost) keeps E[C] well away from a
    far target where the derivative at the exact E[C] reaches it."""
    from hwnas.profiling.predict import predict
    from hwnas.spaces import builtin

    target = predict(latency19_macs, builtin().networks["nsenet_gpu"])["macs"] / 1e6
    runs = {outer: dry_run(latency19_macs, "macs", target, steps=150, outer=outer) for outer in ("expected", "sampled")}
    assert abs(runs["expected"]["relative_error"]) < 0.01
    assert runs["sampled"]["relative_error"] > 0.05
    assert runs["expected"]["alpha"] == pytest.approx(1e-5 * (300 / target) ** 2)  # relative to the target
    assert dry_run(latency19_macs, "macs", target, steps=1, alpha_scaling="fixed")["alpha"] == 1e-5


@pytest.mark.skipif(not SHIPPED.exists(), reason=f"the shipped latency table {SHIPPED.name} is missing")
@pytest.mark.parametrize("fraction", [0.6, 0.9])
def test_dry_run_reaches_latency_target(fraction):
    table = Table.load(SHIPPED)
    start = dry_run(table, "latency", 1.0, steps=1)["initial_expected"]
    result = dry_run(table, "latency", fraction * start, steps=400, beta=2.0)
    assert abs(result["relative_error"]) <= 0.02


def test_expected_outer_gradient(latency19_macs):
    from hwnas.supernet.costs import cost_model
    from hwnas.supernet.search import supernet_layers

    layers = supernet_layers(latency19_macs, 4, 0)
    model = cost_model(latency19_macs, layers, "macs", stem_and_head=True)
    fitness = FitnessIndicators([4] * len(layers), [p.cell_type != "N" for p, _ in layers])
    reg = ResourceRegularizer(model, 1000.0, "nse", 1e-5, 2.0, outer="expected")
    pairs = fitness.sample_pairs(torch.Generator().manual_seed(0))
    value = reg(pairs, fitness)
    expected = reg.expected_cost(fitness)
    assert float(value.detach()) == pytest.approx(float(1e-5 * (expected - 1000.0) ** 2))
    grads = torch.autograd.grad(value, list(fitness.thetas), retain_graph=True)
    sampled_grads = torch.autograd.grad(reg.sampled_cost(pairs), list(fitness.thetas))
    slope = float(2e-5 * (expected - 1000.0))
    for g, s in zip(grads, sampled_grads):
        torch.testing.assert_close(g, slope * s)
    with pytest.raises(ValueError, match="needs the fitness indicators"):
        reg(pairs)


def test_search_cli_json(latency19_macs, tmp_path, capsys):
    path = tmp_path / "t.json"
    latency19_macs.save(path)
    code = main(["search", "--dry-run", "--space", "latency19", "--macro", "latency", "--table", str(path),
                 "--metric", "macs", "--target", "5000", "--steps", "50", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {"initial_expected", "final_expected", "target", "steps"} <= set(out)
    assert out["target"] == 5000 and out["steps"] == 50
    code = main(["search", "--dry-run", "--table", str(path), "--metric", "latency", "--target", "5"])
    assert code == 1 and "holds no latency" in capsys.readouterr().err


def test_example_supernet_runs_tiny():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "example_supernet.py"), "--steps", "10",
                           "--batch", "4", "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result["steps"] == 10 and result["final_expected_ms"] > 0
    assert result["final_expected_ms"] < result["initial_expected_ms"]  # theta moved toward the lower target
