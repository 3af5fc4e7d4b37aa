"""Pricing with a profiled table: the breakdown adds up, the supernet's cost model agrees with
`predict`, and wrong inputs get errors that say what to pass."""

from __future__ import annotations

import re

import pytest
import torch

from hwnas.cli.main import build_parser, main
from hwnas.errors import HwnasError
from hwnas.profiling.predict import predict
from hwnas.profiling.table import Table
from hwnas.spaces import builtin
from hwnas.spaces.macro import Position
from hwnas.supernet import FitnessIndicators, ResourceRegularizer, cost_model

from conftest import REPO

TABLE = REPO / "latency_tables" / "latency19_ort-cpu_b16.json"
NET = builtin().networks["nsenet_gpu"]


@pytest.fixture(scope="module")
def table() -> Table:
    return Table.load(TABLE)


def median(table: Table, key: str) -> float:
    return float(table.entries[key]["latency"]["median"])


def test_breakdown_adds_up_to_the_total(table):
    result = predict(table, NET)
    parts = result["stem"]["latency_ms"] + result["head"]["latency_ms"] + sum(c["latency_ms"] for c in result["cells"])
    assert result["latency_ms"] == pytest.approx(parts, rel=1e-12)
    for cell in result["cells"]:
        assert cell["latency_ms"] == pytest.approx(sum(o["latency_ms"] for o in cell["ops"]) + cell["merge_ms"])
    # the total is the table's entries summed by hand (the combination rule restated here), calibrated
    summed = median(table, "stem") + median(table, "head")
    for pc in NET.placed:
        if not pc.ops:
            continue
        pos = pc.slot.position.key
        terms = len(pc.ops) + (pc.slot.position.cell_type == "N")
        summed += sum(median(table, f"{NET.space.ops[i].name}@{pos}") for i in pc.ops)
        if terms > 1:
            summed += (terms - 1) * median(table, f"merge_add@{pos}") + median(table, f"merge_scale@{pos}")
    assert result["latency_ms_uncalibrated"] == pytest.approx(summed, rel=1e-12)
    assert result["latency_ms"] == pytest.approx(summed * table.meta["calibration"]["factor"], rel=1e-12)


def test_predict_command_latency_column_adds_up(capsys):
    assert main(["predict", "--table", str(TABLE), "nsenet_gpu"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.match(r"\s*(\d+\s+\S+-s\d|stem|head)", line)]
    column = [float(re.findall(r"\d+\.\d{3}", row)[0]) for row in rows]
    assert len(rows) == 2 + sum(1 for pc in NET.placed if pc.ops)
    total = float(re.search(r"predicted ([\d.]+) ms", out).group(1))
    assert sum(column) == pytest.approx(total, abs=0.005 + 0.0005 * len(column))


def layers_of(arch):
    return [(pc.slot.position, list(pc.ops)) for pc in arch.placed if pc.ops]


def test_cost_model_prices_as_predict_does(table):
    layers = layers_of(NET)
    configs = [torch.ones(len(ops), dtype=torch.bool) for _, ops in layers]
    result = predict(table, NET)
    whole = cost_model(table, layers, "latency", stem_and_head=True)
    assert whole.cost(configs) == pytest.approx(result["latency_ms"], rel=1e-12)
    cells_only = cost_model(table, layers, "latency", stem_and_head=False)
    stem_head = result["stem"]["latency_ms"] + result["head"]["latency_ms"]
    assert cells_only.fixed == 0.0
    assert cells_only.cost(configs) == pytest.approx(result["latency_ms"] - stem_head, rel=1e-12)
    assert "calibrated" in whole.unit
    macs = cost_model(table, layers, "macs", stem_and_head=True)
    assert macs.cost(configs) == pytest.approx(result["macs"] / 1e6, rel=1e-12)


def test_stem_and_head_must_be_chosen(table):
    with pytest.raises(TypeError, match="stem_and_head"):
        cost_model(table, layers_of(NET), "latency")  # type: ignore[call-arg]


def test_off_table_position_lists_the_tables_positions(table):
    with pytest.raises(HwnasError) as info:
        cost_model(table, [(Position("N", 48, 48, 28, 1), [0, 1])], "latency", stem_and_head=False)
    message = str(info.value)
    assert "no position N-48-48-28-s1" in message
    assert all(p in message for p in table.meta["positions"])


def test_a_configuration_is_bools(table):
    pos, ops = layers_of(NET)[0]
    layer = cost_model(table, [(pos, ops)], "latency", stem_and_head=False).layers[0]
    as_list = [True] + [False] * (len(ops) - 1)
    assert float(layer.cost(as_list)) == float(layer.cost(torch.tensor(as_list)))
    with pytest.raises(TypeError, match="a configuration is .* bools"):
        layer.cost([1] + [0] * (len(ops) - 1))
    with pytest.raises(TypeError, match="a configuration is .* bools"):
        layer.cost(torch.ones(len(ops) + 1, dtype=torch.bool))


def test_expected_cost_is_a_number_without_gradient(table):
    layers = layers_of(NET)
    costs = cost_model(table, layers, "latency", stem_and_head=True)
    fitness = FitnessIndicators([len(ops) for _, ops in layers], [p.cell_type != "N" for p, _ in layers])
    reg = ResourceRegularizer(costs, target=200.0)
    value = reg.expected_cost(fitness)
    assert isinstance(value, float)
    # every branch at p = 1/2: the differentiable form agrees
    exact = costs.expected([torch.full((len(ops),), 0.5, dtype=torch.float64) for _, ops in layers])
    assert value == pytest.approx(float(exact), rel=1e-12)
    with pytest.raises(TypeError, match="costs must be a CostModel"):
        ResourceRegularizer(table, target=200.0)  # type: ignore[arg-type]


def test_api_and_cli_share_the_regularizer_defaults():
    import inspect

    args = build_parser().parse_args(["search", "--dry-run", "--table", "t.json", "--metric", "latency",
                                      "--target", "8"])
    params = inspect.signature(ResourceRegularizer).parameters
    assert params["outer"].default == args.outer == "expected"
    assert params["form"].default == args.form
    assert list(params)[:2] == ["costs", "target"]


def test_api_and_cli_share_the_validation_default():
    import inspect

    from hwnas import validate_table

    args = build_parser().parse_args(["validate", "--table", "t.json"])
    assert inspect.signature(validate_table).parameters["samples"].default == args.samples
