"""Transferring a table to another device from a few measurements (hwnas.profiling.transfer):
the selection, the model against synthetic devices whose scaling is known, the refusals, the
provenance fields, and a transferred table used by predict and the regularizer's dry run.

The end-to-end transfers run between deterministic devices: the source times a graph as
1 ms + 1 ms per million MACs (tests/flop_backend.py), the target as A * (source time)^B, so
every entry of the new table has a known right answer."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import nn

import hwnas
from hwnas.cli.main import main
from hwnas.costs import head_traffic, op_traffic, stem_traffic
from hwnas.errors import HwnasError
from hwnas.profiling import backends
from hwnas.profiling.build import build_table
from hwnas.profiling.predict import predict
from hwnas.profiling.protocol import Protocol, Stats
from hwnas.profiling.table import Table
from hwnas.profiling.transfer import (MIN_MEASURED, Candidate, TransferModel, candidates, check_source,
                                      measured_count, select, transfer_table)
from hwnas.spaces import builtin, resolve_architecture, resolve_macro, resolve_space
from hwnas.spaces.sampling import sample_architecture

from conftest import REPO
from flop_backend import FlopBackend, FlopRunner, mmacs

TINY = str(REPO / "tests" / "data" / "tiny.json")
SHIPPED = REPO / "latency_tables" / "latency19_ort-cpu_b16.json"
QUICK = Protocol(warmup_ms=1.0, warmup_runs=1, min_sample_ms=1.0, rounds=3, network_rounds=3,
                 calibration_architectures=3)
A, B = 0.6, 0.8  # the target device: A * (source time) ** B


class PowerBackend(FlopBackend):
    """A device whose every graph takes A * (the flops-model device's time) ** B, times `speed` (the
    machine's state: 1.2 is a machine running every graph 1.2x slower)."""

    name = "power-model"
    speed = 1.0

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "name": self.name, "device": {"type": "model", "law": f"{A} * t ** {B}"}}

    def load(self, module: nn.Module, input_shapes: Any) -> hwnas.Runner:
        runner = FlopRunner(module, input_shapes, self.overhead_ms)
        runner.ms = self.speed * A * runner.ms ** B
        return runner


@pytest.fixture(scope="module")
def devices(tmp_path_factory):
    """The tiny space's table on the source device, a full build on the target, and a transfer."""
    folder = tmp_path_factory.mktemp("transfer")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backends, "_REGISTERED", {})
        hwnas.register_backend(FlopBackend)
        hwnas.register_backend(PowerBackend)
        space, macro = resolve_space(TINY), resolve_macro(TINY)
        source = build_table(space, macro, 1.0, FlopBackend(), 2, folder / "source.json", protocol=QUICK,
                             progress=False)
        full = build_table(space, macro, 1.0, PowerBackend(), 2, folder / "full.json", protocol=QUICK, progress=False)
        new = transfer_table(source, str(folder / "source.json"), PowerBackend(), folder / "new.json", 0.3, QUICK,
                             progress=False)
        yield {"source": source, "full": full, "new": new, "folder": folder}


# --- traffic: the model's "elements moved", against the graphs themselves --------------------------

def hooked_traffic(module: nn.Module, shape: tuple[int, ...]) -> int:
    """Elements each conv and linear layer reads (input, weight) and writes, counted on the module."""
    total = 0

    def count(m: nn.Module, inputs: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += inputs[0].numel() + m.weight.numel() + out.numel() + (m.bias.numel() if m.bias is not None else 0)

    hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():  # shapes only: on the meta device nothing is computed
        module.eval()(torch.empty(shape, device="meta"))
    for h in hooks:
        h.remove()
    return total


def test_traffic_counts_what_the_graphs_move():
    """Every op kind (grouped and dilated depthwise too) at a normal and a reduction position, and
    the stem and head, against the elements the modules' convs and linear layers read and write."""
    from hwnas.model.blocks import Operation
    from hwnas.model.stem_head import Head, Stem

    cat = builtin()
    ops = {op.kind + str(op.groups) + str(op.dilation): op for name in ("latency19", "flops27+second45")
           for op in cat.spaces[name].ops}  # one of each kind, grouping and dilation
    for macro in (cat.macros["latency"], resolve_macro(TINY)):
        with torch.device("meta"):  # modules without memory or initialisation
            positions = macro.positions(1.0)
            for pos in (positions[0], next(p for p in positions if p.stride == 2)):
                for op in ops.values():
                    shape = (1, pos.cin, pos.resolution, pos.resolution)
                    assert op_traffic(op, pos) == hooked_traffic(Operation(op, pos), shape), (op.name, pos.key)
            assert stem_traffic(macro) == hooked_traffic(Stem(macro), (1, 3, macro.input, macro.input))
            res = macro.final_resolution(1.0)
            assert head_traffic(macro, 1.0) == hooked_traffic(Head(macro, 1.0), (1, macro.last_channels(1.0), res, res))
            # negative control: another expansion at the same position moves other amounts
            a, b = cat.spaces["latency19"].ops[:2]
            assert op_traffic(a, pos) != hooked_traffic(Operation(b, pos), (1, pos.cin, pos.resolution, pos.resolution))


# --- the selection ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped():
    return Table.load(SHIPPED)


def uncovered(cands: list[Candidate], keys: list[str]) -> set[tuple[str, str]]:
    """The attribute values of the plan (kinds, kernels, expansions, strides, cells, resolutions)
    that no entry of `keys` has."""
    chosen = {c.key for c in cands if c.key in keys}
    return {a for c in cands for a in c.attributes} - {a for c in cands if c.key in chosen for a in c.attributes}


def test_the_selection_covers_every_kind_kernel_expansion_stride_and_resolution(shipped):
    cands = candidates(shipped)
    count = measured_count(len(cands), 0.1)
    assert count == 19 and len(cands) == 191  # at most a tenth: floor(19.1)
    chosen = select(cands, count)
    keys = [k for k, _ in chosen]
    assert len(set(keys)) == count
    assert uncovered(cands, keys) == set()
    names = {name for c in cands for name, _ in c.attributes}
    assert {"family", "kernel", "expand", "stride", "resolution", "cell", "dilation", "groups"} <= names
    families = {c.family for c in cands if c.key in keys}
    assert families == {"dw", "conv", "dual", "ssc", "merge_add", "merge_scale", "stem", "head"}
    assert select(cands, count) == chosen  # deterministic: from the source alone
    # coverage first, then the least known entries; each says why it was chosen
    whys = [why for _, why in chosen]
    assert whys[0].startswith("covers") and whys[-1].startswith("most informative")
    # negative control: the first 19 entries of the plan (one position) miss most of it
    assert len(uncovered(cands, [c.key for c in cands[:count]])) > 5


def test_the_selection_prefers_entries_the_source_measured_poorly(shipped):
    """An entry whose source measurement was noisy (unstable, or taken while the machine's speed
    changed) tells least about the new device: one that weighs in networks is measured."""
    cands = candidates(shipped)
    count = measured_count(len(cands), 0.1)
    keys = {k for k, _ in select(cands, count)}
    target = max((c for c in cands if c.family == "dw" and c.key not in keys), key=lambda c: c.weight)
    noisy = [replace(c, source_sd=0.2) if c.key == target.key else c for c in cands]
    picked = dict(select(noisy, count))
    assert target.key in picked  # among equal coverers, or for what it tells
    assert target.key not in keys  # negative control: with its real noise it is not chosen


def test_each_pick_takes_most_off_the_weighted_variance_of_the_prices(shipped):
    """After coverage, each pick is the entry whose measurement most reduces the use-weighted sum,
    over the entries not yet measured, of the fitted model's variance there, plus its own source
    noise: brute force, inverting the design with each candidate added, agrees with the greedy
    choice and its rank-one update."""
    from hwnas.profiling import transfer as tr

    cands = candidates(shipped)
    chosen = select(cands, 25)
    design = tr.Design.of(cands)
    x = torch.tensor(design.matrix(cands), dtype=torch.float64)
    penalty = torch.tensor(design.penalty(tr.SELECTION_LAMBDA, tr.SELECTION_LAMBDA), dtype=torch.float64)
    weight = torch.tensor([c.weight for c in cands], dtype=torch.float64)
    weight /= weight.sum()
    noise = torch.tensor([c.source_sd ** 2 / tr.SELECTION_RESIDUAL ** 2 for c in cands], dtype=torch.float64)
    index = {c.key: i for i, c in enumerate(cands)}
    picked = [index[k] for k, _ in chosen]
    first = next(n for n, (_, why) in enumerate(chosen) if why.startswith("most informative"))
    assert 5 < first < 25

    def model_variance(measured: list[int], over: torch.Tensor) -> float:
        xs = x[measured]
        return float(over @ torch.einsum("ij,jk,ik->i", x, torch.linalg.inv(xs.T @ xs + penalty), x))

    for n in range(first, len(chosen)):
        before = picked[:n]
        left = weight.clone()
        left[before] = 0.0
        now = model_variance(before, left)
        cut = [now - model_variance(before + [j], left) + float(left[j] * noise[j]) if j not in before else -1.0
               for j in range(len(cands))]
        assert cut[picked[n]] == pytest.approx(max(cut), rel=1e-6)
        # negative control: the entry the model knows least is not always the one that tells most
    least = [float(v) for v in torch.einsum("ij,jk,ik->i", x, torch.linalg.inv(x[picked[:first]].T @ x[picked[:first]]
                                                                                   + penalty), x)]
    assert picked[first] != max((i for i in range(len(cands)) if i not in picked[:first]), key=least.__getitem__)


# --- the model against synthetic devices with known scaling ---------------------------------------

def synthetic(cands: list[Candidate], law) -> dict[str, float]:
    return {c.key: law(c) for c in cands}


def fit_on(cands, truth, budget=0.1):
    keys = [k for k, _ in select(cands, measured_count(len(cands), budget))]
    model = TransferModel.fit(cands, {k: truth[k] for k in keys})
    rest = [c for c in cands if c.key not in keys]
    return model, rest, model.predict(rest)


def test_the_fit_recovers_a_power_law_device(shipped):
    """new = 0.6 * source^0.8: the log-linear model holds it exactly (its size slope)."""
    cands = candidates(shipped)
    truth = synthetic(cands, lambda c: A * c.source_ms ** B)
    model, rest, predicted = fit_on(cands, truth)
    errors = [abs(ms / truth[c.key] - 1) for c, (ms, _) in zip(rest, predicted)]
    assert max(errors) < 0.01
    assert model.summary()["held_out"]["mape"] < 0.01
    # the slope on log source latency is B - 1, whatever part the per-family slopes take
    spread = model.design.spread[0]
    slopes = dict(zip(model.design.columns, model.coefficients))
    for family in model.design.families:
        assert (slopes["size"] + slopes[f"size:{family}"]) / spread == pytest.approx(B - 1, abs=0.02)


def test_the_fit_recovers_per_kind_factors(shipped):
    """Each kind of entry its own speed ratio (dense convs slower, depthwise and merges faster)."""
    factors = {"dw": 0.7, "conv": 1.6, "dual": 1.7, "ssc": 1.5, "merge_add": 0.4, "merge_scale": 0.6, "stem": 1.2,
               "head": 0.9}
    cands = candidates(shipped)
    truth = synthetic(cands, lambda c: factors[c.family] * c.source_ms)
    _, rest, predicted = fit_on(cands, truth)
    errors = [abs(ms / truth[c.key] - 1) for c, (ms, _) in zip(rest, predicted)]
    assert max(errors) < 0.03
    # negative control: one ratio for every kind (what a single scale factor would do) is far off
    one = statistics_median([truth[k] / c.source_ms for c in cands for k in [c.key]])
    assert max(abs(one * c.source_ms / truth[c.key] - 1) for c in rest) > 0.5


def statistics_median(values: list[float]) -> float:
    import statistics

    return statistics.median(values)


def test_the_uncertainty_covers_the_error_of_a_noisy_device(shipped):
    """A device with 8% random per-entry variation the source cannot know: the model's predicted
    uncertainty matches the errors (about 95% within two standard deviations), and a noiseless
    device gets a far smaller one."""
    cands = candidates(shipped)
    rng = random.Random(0)
    noise = {c.key: math.exp(rng.gauss(0, 0.08)) for c in cands}
    truth = synthetic(cands, lambda c: 1.3 * c.source_ms * noise[c.key])
    model, rest, predicted = fit_on(cands, truth, budget=0.2)
    z = [abs(math.log(ms / truth[c.key])) / sd for c, (ms, sd) in zip(rest, predicted)]
    assert 0.85 <= sum(v <= 2 for v in z) / len(z)
    sds = [sd for _, sd in predicted]
    assert 0.06 <= statistics_median(sds) <= 0.16
    _, _, clean = fit_on(cands, synthetic(cands, lambda c: 1.3 * c.source_ms), budget=0.2)
    assert statistics_median([sd for _, sd in clean]) < 0.3 * statistics_median(sds)


def test_a_measurement_far_off_does_not_pull_the_fit(shipped):
    """Huber weights: one measured entry 3x off (a burst of load) moves the others' predictions
    little; without the robust weights it moves them more."""
    from hwnas.profiling import transfer as tr

    cands = candidates(shipped)
    truth = synthetic(cands, lambda c: 1.3 * c.source_ms)
    keys = [k for k, _ in select(cands, 30)]
    measured = {k: truth[k] for k in keys}
    measured[keys[-1]] *= 3
    model = TransferModel.fit(cands, measured)
    rest = [c for c in cands if c.key not in keys]
    robust = max(abs(ms / truth[c.key] - 1) for c, (ms, _) in zip(rest, model.predict(rest)))
    design = model.design
    x = design.matrix([c for c in cands if c.key in measured])
    y = [math.log(measured[c.key] / c.source_ms) for c in cands if c.key in measured]
    import numpy as np

    plain = np.linalg.solve(x.T @ x + design.penalty(model.family_lambda, model.slope_lambda), x.T @ np.array(y))
    plain_pred = design.matrix(rest) @ plain
    naive = max(abs(c.source_ms * math.exp(p) / truth[c.key] - 1) for c, p in zip(rest, plain_pred))
    assert robust < 0.03 < naive


# --- a transfer end to end, between deterministic devices -----------------------------------------

def test_a_transferred_table_records_how_each_entry_came_to_be(devices):
    source, full, new = devices["source"], devices["full"], devices["new"]
    assert new.meta["complete"] and "calibration" in new.meta
    assert set(new.entries) == set(full.entries) and list(new.entries) == list(full.entries)  # plan order
    measured = [k for k in new.entries if new.origin(k) == "measured"]
    assert len(measured) == measured_count(32, 0.3) == 9 and len(new.transferred) == 23
    for key in measured:  # measured with the target's protocol, as its full build measured them
        assert new.latency(key) == pytest.approx(full.latency(key), rel=1e-9)
        assert new.entries[key]["latency"]["count"] == QUICK.rounds and "transfer" not in new.entries[key]
    for key in new.transferred:
        entry = new.entries[key]
        assert entry["latency"]["count"] == 0  # no runs: the statistics are the prediction
        assert entry["transfer"]["source_ms"] == pytest.approx(source.latency(key), rel=1e-5)
        assert 0 < entry["transfer"]["uncertainty"] < 0.05
        assert entry["macs"] == full.entries[key]["macs"] and entry["params"] == full.entries[key]["params"]
        # the device's law is the model's own form: every transferred entry right to 1%
        assert new.latency(key) == pytest.approx(full.latency(key), rel=0.01)
    t = new.meta["transfer"]
    assert t["source"]["device"] == source.meta["device"] and t["source"]["protocol"] == source.meta["protocol"]
    assert t["source"]["backend"]["name"] == "flops-model" and t["source"]["file"] == "source.json"
    assert [s["key"] for s in t["selection"]] == measured or set(s["key"] for s in t["selection"]) == set(measured)
    assert all(s["why"].startswith(("covers", "most informative")) for s in t["selection"])
    held = t["model"]["held_out"]
    assert held["n"] == 9 and held["mape"] < 0.01 and len(held["entries"]) == 9
    assert new.meta["device"] == PowerBackend().describe()["device"]  # the new table is of this device
    assert Table.load(devices["folder"] / "new.json").to_dict() == new.to_dict()  # what was written


def test_a_transferred_table_is_of_format_2_every_entry_a_ratio_to_its_reference(devices):
    """The measured entries are ratios to the reference network as a build measures them, with the
    reference and its level recorded; a transferred entry is its predicted ratio (no runs), and every
    latency, of either origin, is its ratio times the level."""
    from hwnas.profiling.table import VERSION

    full, new = devices["full"], devices["new"]
    assert new.version == VERSION == 2 and Table.load(devices["folder"] / "new.json").version == 2
    assert new.meta["reference"] == full.meta["reference"]  # the same graph as a full build on this device
    level = new.meta["reference_level"]["level_ms"]
    assert level == pytest.approx(full.meta["reference_level"]["level_ms"], rel=1e-9)  # a steady device
    measured = [k for k in new.entries if new.origin(k) == "measured"]
    groups = {g["group"] for g in new.meta["reference_level"]["groups"]}
    assert groups == {new.entries[k].get("position", "stem+head") for k in measured}  # one per group measured
    for key, entry in new.entries.items():
        assert new.latency(key) == pytest.approx(new.ratio(key) * level, rel=1e-6), key
        if new.origin(key) == "measured":
            assert new.ratio(key) == pytest.approx(full.ratio(key), rel=1e-9)
        else:
            assert entry["ratio"]["count"] == 0 and entry["latency"]["count"] == 0
            assert new.ratio(key) == pytest.approx(full.ratio(key), rel=0.01)
    # calibrated as a build calibrates: the networks timed with the reference, referred to its level
    calibration = new.meta["calibration"]
    assert calibration["reference_vs_level"] == pytest.approx(1.0) and calibration["rounds"] >= QUICK.network_rounds
    assert calibration["factor"] == pytest.approx(full.meta["calibration"]["factor"], rel=0.02)


def test_transferred_entries_are_re_anchored_with_the_measured_ones(devices):
    """Brought to another level of the reference (as a merge or a resumed build re-anchors), a
    transferred entry moves with the measured ones: one derivation, from the ratio, for both."""
    from hwnas.profiling.reference import refer_entries

    new = devices["new"]
    moved = Table(json.loads(json.dumps(new.meta)), json.loads(json.dumps(new.entries)))
    for group in moved.meta["reference_level"]["groups"]:
        group["median_ms"] *= 1.25
    refer_entries(moved)
    for key in new.entries:
        assert moved.latency(key) == pytest.approx(1.25 * new.latency(key), rel=1e-6), key
    assert predict(moved, tinynet())["latency_ms"] == pytest.approx(1.25 * predict(new, tinynet())["latency_ms"],
                                                                     rel=1e-6)


def as_format_1(table: Table, slower: float) -> Table:
    """The same table as the drift-probe protocol wrote it (format 1): entries as timed (here on a
    machine `slower` than the build's), no reference network, the stem timed alone as the probe."""
    meta = {k: v for k, v in table.meta.items() if k not in ("reference", "reference_level")}
    entries = {}
    for key, entry in table.entries.items():
        timed = replace(Stats.from_dict(entry["latency"]).scaled(slower), iqr=None)
        entries[key] = {k: v for k, v in entry.items() if k != "ratio"} | {"latency": timed.to_dict(),
                                                                         "probe_drift": 1.0}
    meta["probe_baseline"] = entries["stem"]["latency"]
    return Table(meta, entries, version=1)


def test_a_source_of_format_1_or_2_transfers_alike(devices, registered, tmp_path):
    """The shipped table is of format 1 (entries as timed), a table built now of format 2 (ratios at
    its reference's level): both are sources, and the model, indifferent to the source's common
    scale, makes the same table from the same entries timed 10% slower."""
    as_format_1(devices["source"], 1.1).save(tmp_path / "old.json")
    old = Table.load(tmp_path / "old.json")
    assert old.version == 1 and "reference" not in old.meta
    check_source(old, "old.json", resolve_space(TINY), resolve_macro(TINY), 1.0, 2)
    made = transfer_table(old, "old.json", PowerBackend(), tmp_path / "new.json", 0.3, QUICK, progress=False)
    new = devices["new"]
    assert made.version == 2 and made.meta["transfer"]["source"]["format"] == 1
    source = new.meta["transfer"]["source"]
    assert source["format"] == 2 and source["reference"]["level_ms"] == devices["source"].meta["reference_level"][
        "level_ms"]
    assert made.meta["transfer"]["selection"] == new.meta["transfer"]["selection"]
    for key in new.entries:
        assert made.latency(key) == pytest.approx(new.latency(key), rel=1e-5), key
        if made.origin(key) == "transferred":
            assert made.entries[key]["transfer"]["source_ms"] == pytest.approx(
                1.1 * new.entries[key]["transfer"]["source_ms"], rel=1e-5)
    # negative control: a source whose entries are off by unequal factors transfers otherwise
    bent = as_format_1(devices["source"], 1.1)
    for entry in bent.entries.values():
        if entry.get("op", "").startswith("dw_k3"):
            entry["latency"] = Stats.from_dict(entry["latency"]).scaled(1.5).to_dict()
    other = transfer_table(bent, "bent.json", PowerBackend(), tmp_path / "bent.json", 0.3, QUICK, progress=False)
    assert max(abs(other.latency(k) / new.latency(k) - 1) for k in new.transferred) > 0.05


def test_tables_without_origins_read_as_measured(shipped, tmp_path):
    assert shipped.transferred == [] and {shipped.origin(k) for k in shipped.entries} == {"measured"}
    raw = shipped.to_dict()
    raw["entries"]["stem"]["origin"] = "guessed"
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(HwnasError, match=r'entries\["stem"\]\.origin must be'):
        Table.load(tmp_path / "bad.json")
    raw["entries"]["stem"]["origin"] = "transferred"  # without its source latency and uncertainty
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(HwnasError, match=r'entries\["stem"\]\.transfer must be'):
        Table.load(tmp_path / "bad.json")


def tinynet():
    return resolve_architecture(f"{TINY}:tinynet")


def test_predict_says_when_a_price_rests_on_transferred_entries(devices):
    priced = predict(devices["new"], tinynet())
    moved = priced["transferred"]
    assert 0 < moved["entries"] < moved["of"] and moved["source"] == "source.json"
    assert 0 < moved["share"] < 1 and moved["latency_ms"] < priced["latency_ms"]
    origins = [op["origin"] for cell in priced["cells"] for op in cell["ops"]]
    assert set(origins) <= {"measured", "transferred"} and "transferred" in origins
    # by hand, entry by entry: the transferred entries' part of the price, merges included
    new, arch = devices["new"], tinynet()
    part = sum(new.latency(k) for k in ("stem", "head") if new.origin(k) == "transferred")
    for placed in arch.placed:
        pos, n = placed.slot.position, len(placed.ops)
        keys = [f"{arch.space.ops[i].name}@{pos.key}" for i in placed.ops]
        part += sum(new.latency(k) for k in keys if new.origin(k) == "transferred")
        terms = n + (pos.cell_type == "N")
        if n and terms > 1:
            add, scale = f"merge_add@{pos.key}", f"merge_scale@{pos.key}"
            part += (terms - 1) * new.latency(add) * (new.origin(add) == "transferred")
            part += new.latency(scale) * (new.origin(scale) == "transferred")
    assert moved["latency_ms"] == pytest.approx(part * new.calibration_factor, rel=1e-9)
    assert moved["share"] == pytest.approx(part / priced["latency_ms_uncalibrated"], rel=1e-9)
    full = predict(devices["full"], tinynet())
    assert "transferred" not in full and "origin" not in full["cells"][0]["ops"][0]  # negative control
    assert priced["latency_ms"] == pytest.approx(full["latency_ms"], rel=0.02)


@pytest.fixture
def registered():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backends, "_REGISTERED", {})
        hwnas.register_backend(FlopBackend)
        hwnas.register_backend(PowerBackend)
        yield


def test_show_and_predict_commands_name_the_transferred_entries(devices, registered, capsys):
    path = str(devices["folder"] / "new.json")
    assert main(["table", "show", path]) == 0
    out = capsys.readouterr().out
    assert "transferred from source.json" in out and "leave-one-out" in out and "transferred ±" in out
    assert main(["predict", "--table", path, f"{TINY}:tinynet"]) == 0
    out = capsys.readouterr().out
    assert "were transferred from source.json" in out and "*" in out
    assert main(["predict", "--table", str(devices["folder"] / "full.json"), f"{TINY}:tinynet"]) == 0
    assert "transferred" not in capsys.readouterr().out


def test_predict_check_on_a_transferred_table_says_how_the_machine_runs_now(devices, registered, capsys,
                                                                            monkeypatch):
    """The transferred table's reference and level are those of its measured groups: `predict --check`
    times the reference now and compares; the price itself (transferred entries included) stays."""
    path = str(devices["folder"] / "new.json")
    assert main(["predict", "--table", path, f"{TINY}:tinynet", "--check", "--json"]) == 0
    steady = json.loads(capsys.readouterr().out)
    assert steady["check"]["vs_table"] == pytest.approx(1.0, abs=1e-6)
    monkeypatch.setattr(PowerBackend, "speed", 1.13)
    assert main(["predict", "--table", path, f"{TINY}:tinynet", "--check"]) == 0
    out = capsys.readouterr().out
    assert "the machine now runs 1.13x slower than when the table was built" in out
    assert "were transferred from source.json" in out
    assert main(["predict", "--table", path, f"{TINY}:tinynet", "--check", "--json"]) == 0
    slow = json.loads(capsys.readouterr().out)
    assert slow["latency_ms"] == steady["latency_ms"] and slow["transferred"] == steady["transferred"]
    assert slow["check"]["latency_ms_now"] == pytest.approx(1.13 * steady["latency_ms"], rel=1e-6)


def test_search_dry_run_and_validate_use_a_transferred_table(devices, registered, capsys, monkeypatch):
    from hwnas.profiling.validate import validate

    results = {}
    for name in ("new", "full"):
        code = main(["search", "--dry-run", "--table", str(devices["folder"] / f"{name}.json"), "--metric", "latency",
                     "--target", "5", "--steps", "10", "--k", "0", "--json"])
        assert code == 0
        results[name] = json.loads(capsys.readouterr().out)
    assert results["new"]["max_cost"] == pytest.approx(results["full"]["max_cost"], rel=0.02)
    assert results["new"]["final_expected"] == pytest.approx(results["full"]["final_expected"], rel=0.02)
    # validate times whole networks on the table's device (this one), now running 1.2x slower than
    # during the transfer, refers them to the table's machine state through its reference network,
    # and prices them with the table
    monkeypatch.setattr(PowerBackend, "speed", 1.2)
    report = validate(devices["new"], samples=2, seed=1, progress=False, rounds=1)
    rng = random.Random(1)
    archs = [sample_architecture(resolve_space(TINY), resolve_macro(TINY), 1.0, rng, name=f"sample{i}") for i in (0, 1)]
    assert [s["predicted_ms"] for s in report["samples"]] == [predict(devices["new"], a)["latency_ms"] for a in archs]
    assert report["measured"] == "referred" and report["machine_vs_table"] == pytest.approx(1.2, rel=1e-6)
    for s, arch in zip(report["samples"], archs):
        whole = FlopRunner(hwnas.build_network(arch), [(2, 3, 32, 32)], 1.0).ms
        assert s["measured_ms"] == pytest.approx(A * whole ** B, rel=1e-6)  # as the table's state had it
        assert s["raw_ms"] == pytest.approx(1.2 * A * whole ** B, rel=1e-6)  # negative control: as timed


# --- refusals ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("ask,field", [
    (dict(space="latency19"), "meta.space"),
    (dict(macro="latency"), "meta.macro"),
    (dict(macro="resolution64"), "meta.resolution"),
    (dict(batch=16), "meta.batch"),
    (dict(scale=0.5), "meta.scale"),
])
def test_a_source_of_other_settings_is_refused_naming_the_field(devices, ask, field):
    source = devices["source"]
    args: dict[str, Any] = {}
    if "space" in ask:
        args["space"] = builtin().spaces[ask["space"]]
    if ask.get("macro") == "latency":
        args["macro"] = builtin().macros["latency"]
    elif "macro" in ask:
        args["macro"] = replace(resolve_macro(TINY), input=64)
    args.update({k: v for k, v in ask.items() if k in ("batch", "scale")})
    with pytest.raises(HwnasError, match=field.replace(".", r"\.")) as err:
        check_source(source, "source.json", **args)
    assert "\n" not in str(err.value)
    check_source(source, "source.json", resolve_space(TINY), resolve_macro(TINY), 1.0, 2)  # its own: accepted


def test_sources_that_cannot_be_transferred_are_refused(devices, latency19_macs, tmp_path):
    with pytest.raises(HwnasError, match=r"holds no latency \(meta\.backend"):
        check_source(latency19_macs, "macs.json")
    with pytest.raises(HwnasError, match=r"itself a transferred table \(meta\.transfer\)"):
        check_source(devices["new"], "new.json")
    partial = Table(dict(devices["source"].meta), dict(devices["source"].entries))
    del partial.entries["head"]
    with pytest.raises(HwnasError, match="lacks 1 entry .*'head'"):
        check_source(partial, "partial.json")
    with pytest.raises(HwnasError, match="measures no latency"):
        transfer_table(devices["source"], "source.json", hwnas.get_backend("none"), tmp_path / "x.json")
    with pytest.raises(HwnasError, match=f"at least {MIN_MEASURED}: raise --budget"):
        transfer_table(devices["source"], "source.json", PowerBackend(), tmp_path / "x.json", budget=0.1)
    assert not (tmp_path / "x.json").exists()


def test_the_command_refuses_in_one_line_and_writes_nothing(devices, registered, tmp_path, capsys):
    src = str(devices["folder"] / "source.json")
    out = tmp_path / "new.json"
    for extra, field in ((["--batch", "16"], "meta.batch"), (["--space", "latency19"], "meta.space")):
        code = main(["table", "transfer", "--from", src, "--backend", "power-model", "-o", str(out), *extra])
        err = capsys.readouterr().err
        assert code == 1 and field in err and len(err.strip().splitlines()) == 1
    code = main(["table", "transfer", "--from", src, "--backend", "power-model", "--budget", "0", "-o", str(out)])
    assert code == 2 and "--budget" in capsys.readouterr().err
    assert not out.exists()


# --- the build hook, and resuming ----------------------------------------------------------------------

def test_a_build_restricted_to_keys_measures_those_only(tmp_path, registered):
    space, macro = resolve_space(TINY), resolve_macro(TINY)
    keys = ["stem", "dw_k5_t1@R-8-16-32-s2", "merge_add@N-24-24-8-s1"]
    table = build_table(space, macro, 1.0, PowerBackend(), 2, tmp_path / "t.json", protocol=QUICK, progress=False,
                        keys=keys)
    assert set(table.entries) == set(keys)
    assert not table.meta["complete"] and "calibration" not in table.meta
    with pytest.raises(HwnasError, match="'nope@N' is not an entry of the table's plan"):
        build_table(space, macro, 1.0, PowerBackend(), 2, tmp_path / "u.json", protocol=QUICK, progress=False,
                    keys=["nope@N"])


class Interrupted(Exception):
    pass


class Flaky(PowerBackend):
    """Killed at its sixth graph load, as a transfer killed while measuring."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    def load(self, module: nn.Module, input_shapes: Any) -> hwnas.Runner:
        self.loads += 1
        if self.loads == 6:
            raise Interrupted
        return super().load(module, input_shapes)


def test_an_interrupted_transfer_resumes_to_the_same_table(devices, registered, tmp_path, capsys):
    out = tmp_path / "new.json"
    with pytest.raises(Interrupted):
        transfer_table(devices["source"], "source.json", Flaky(), out, 0.3, QUICK, progress=False)
    partial = Table.load(out)
    assert not partial.meta["complete"] and 0 < len(partial.entries) < 9
    assert main(["table", "show", str(out)]) == 0
    assert f"unfinished, {len(partial.entries)} of the 9 selected entries measured" in capsys.readouterr().out
    with pytest.raises(HwnasError, match="exists; pass --resume"):
        transfer_table(devices["source"], "source.json", PowerBackend(), out, 0.3, QUICK, progress=False)
    with pytest.raises(HwnasError, match="not a transfer of source.json with --budget 0.5"):
        transfer_table(devices["source"], "source.json", PowerBackend(), out, 0.5, QUICK, progress=False, resume=True)
    done = transfer_table(devices["source"], "source.json", PowerBackend(), out, 0.3, QUICK, progress=False,
                          resume=True)
    expect = devices["new"]
    assert done.meta["complete"] and list(done.entries) == list(expect.entries)
    for key in done.entries:
        assert done.latency(key) == pytest.approx(expect.latency(key), rel=1e-9)
    assert done.meta["calibration"]["factor"] == expect.meta["calibration"]["factor"]


def test_a_transfer_resumed_on_a_slower_machine_refers_to_one_reference_state(devices, registered, tmp_path,
                                                                               capsys, monkeypatch):
    """Killed while measuring, resumed on the machine now 1.3x slower: every entry keeps its ratio,
    measured and transferred alike, the level is the median over the groups of both states, and the
    resume is recorded and said."""
    out = tmp_path / "new.json"
    with pytest.raises(Interrupted):
        transfer_table(devices["source"], "source.json", Flaky(), out, 0.3, QUICK, progress=False)
    before = len(Table.load(out).meta["reference_level"]["groups"])
    assert before >= 1
    monkeypatch.setattr(PowerBackend, "speed", 1.3)
    done = transfer_table(devices["source"], "source.json", PowerBackend(), out, 0.3, QUICK, progress=False,
                          resume=True)
    expect = devices["new"]
    groups = done.meta["reference_level"]["groups"]
    assert [g.get("resumed", 0) for g in groups] == [0] * before + [1] * (len(groups) - before)
    level, steady = done.meta["reference_level"]["level_ms"], expect.meta["reference_level"]["level_ms"]
    for key in expect.entries:
        assert done.ratio(key) == pytest.approx(expect.ratio(key), rel=1e-6), key
        assert done.latency(key) / level == pytest.approx(expect.latency(key) / steady, rel=1e-6)
    # the calibration ran 1.3x slower than the first groups and still gives the steady factor
    assert done.meta["calibration"]["factor"] == pytest.approx(expect.meta["calibration"]["factor"], rel=1e-6)
    assert done.meta["calibration"]["reference_vs_level"] == pytest.approx(1.3 * steady / level, rel=1e-6)
    assert main(["table", "show", str(out)]) == 0
    assert "after resume 1 the machine ran 1.30x slower than before" in capsys.readouterr().out


def test_a_transfer_killed_before_its_calibration_calibrates_through_the_reference(devices, registered,
                                                                                    tmp_path, monkeypatch):
    """Every entry measured and predicted on a steady machine, the calibration resumed on the machine
    1.4x slower: the networks are referred to the entries' level through the reference, so the
    factor is the undisturbed transfer's (as timed, the networks ran 1.4x slower)."""
    from hwnas.profiling import validate

    def killed(*args: Any, **kwargs: Any) -> Any:
        raise Interrupted

    out = tmp_path / "new.json"
    with monkeypatch.context() as patch:
        patch.setattr(validate, "calibrate", killed)
        with pytest.raises(Interrupted):
            transfer_table(devices["source"], "source.json", PowerBackend(), out, 0.3, QUICK, progress=False)
    partial = Table.load(out)
    assert "model" in partial.meta["transfer"] and "calibration" not in partial.meta
    assert not partial.meta["complete"] and len(partial.transferred) == 23
    monkeypatch.setattr(PowerBackend, "speed", 1.4)
    done = transfer_table(devices["source"], "source.json", PowerBackend(), out, 0.3, QUICK, progress=False,
                          resume=True)
    calibration, expect = done.meta["calibration"], devices["new"].meta["calibration"]
    assert calibration["reference_vs_level"] == pytest.approx(1.4, rel=1e-6)
    assert calibration["factor"] == pytest.approx(expect["factor"], rel=1e-6)
    assert done.meta["complete"] and done.to_dict()["entries"] == partial.to_dict()["entries"]


def test_a_merged_sharded_build_is_a_source_and_its_parts_are_refused(devices, registered, tmp_path, capsys):
    """A source built in two shards on devices running at different speeds, merged (re-anchored
    through the reference), transfers as the single build does; a part is refused, naming the field."""
    from hwnas.profiling.shards import Shard, merge

    class Slower(FlopBackend):
        def load(self, module: nn.Module, input_shapes: Any) -> hwnas.Runner:
            runner = super().load(module, input_shapes)
            runner.ms *= 1.25
            return runner

    space, macro = resolve_space(TINY), resolve_macro(TINY)
    parts = [build_table(space, macro, 1.0, backend, 2, tmp_path / f"part{i}.json", protocol=QUICK, progress=False,
                         shard=Shard(i, 2)) for i, backend in ((1, FlopBackend()), (2, Slower()))]
    with pytest.raises(HwnasError, match=r"shard 1/2 of a sharded build \(meta\.shard\)") as err:
        check_source(parts[0], "part1.json")
    assert "\n" not in str(err.value)
    code = main(["table", "transfer", "--from", str(tmp_path / "part2.json"), "--backend", "power-model",
                 "--budget", "0.3", "-o", str(tmp_path / "x.json")])
    assert code == 1 and "(meta.shard)" in capsys.readouterr().err and not (tmp_path / "x.json").exists()
    merged = merge([("part1.json", parts[0]), ("part2.json", parts[1])])
    check_source(merged, "merged.json")
    made = transfer_table(merged, "merged.json", PowerBackend(), tmp_path / "new.json", 0.3, QUICK, progress=False)
    new = devices["new"]
    assert made.meta["transfer"]["selection"] == new.meta["transfer"]["selection"]
    for key in new.entries:
        assert made.latency(key) == pytest.approx(new.latency(key), rel=1e-5), key


def test_the_command_transfers_and_says_how(devices, registered, tmp_path, capsys):
    src = str(devices["folder"] / "source.json")
    out = tmp_path / "cli.json"
    code = main(["table", "transfer", "--from", src, "--backend", "power-model", "--budget", "0.3", "--space", TINY,
                 "--macro", TINY, "--batch", "2", "--scale", "1", "--rounds", "3", "-o", str(out), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["measured"] == 9 and summary["transferred"] == 23 and summary["entries"] == 32
    assert summary["source"] == "source.json" and summary["held_out"]["n"] == 9
    assert [s["key"] for s in summary["selection"]] == [s["key"] for s in devices["new"].meta["transfer"]["selection"]]
    table = Table.load(out)
    assert table.meta["complete"] and table.meta["protocol"]["rounds"] == 3
    code = main(["table", "transfer", "--from", src, "--backend", "power-model", "--budget", "0.3", "--rounds", "3",
                 "-o", str(out), "--resume"])  # already complete: nothing to do, the same summary
    printed = capsys.readouterr().out
    assert code == 0 and "9 measured on this device (28.1%), 23 transferred from source.json" in printed
    assert "leave-one-out" in printed
