"""Tables measured against a reference network: builds on a device whose speed drifts or bursts
(virtual time, fake_backend.DriftingBackend), resume on a machine in another state, `hwnas predict
--check`, and tables of format 1 (the drift-probe protocol)."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest

from hwnas.cli.main import main
from hwnas.errors import HwnasError
from hwnas.profiling import protocol as protocol_module
from hwnas.profiling.backends import REGISTRY
from hwnas.profiling.build import build_table, calibrate_file
from hwnas.profiling.predict import predict
from hwnas.profiling.protocol import Protocol, Stats
from hwnas.profiling.reference import check_machine, reference_definition, reference_of, reference_op
from hwnas.profiling.shards import Shard, merge
from hwnas.profiling.table import Table
from hwnas.spaces import builtin, resolve_architecture, resolve_macro, resolve_space

from conftest import REPO
from fake_backend import DriftingBackend, FakeBackend

TINY = str(REPO / "tests" / "data" / "tiny.json")
QUICK = Protocol(warmup_ms=1.0, warmup_runs=1, min_sample_ms=1.0, rounds=5, network_rounds=3,
                 calibration_architectures=2)


def build(path: Any, backend: Any, **kw: Any) -> Table:
    return build_table(resolve_space(TINY), resolve_macro(TINY), 1.0, backend, 2, path,
                       protocol=kw.pop("protocol", QUICK), progress=False, **kw)


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch):
    def refuse(seconds):
        raise AssertionError(f"the protocol paused {seconds} s")

    monkeypatch.setattr(protocol_module.time, "sleep", refuse)


@pytest.fixture
def fake_cli(monkeypatch):
    """`hwnas` commands in this process with the backend 'fake' being FakeBackend (or `name`)."""
    def use(name: str = "FakeBackend") -> None:
        monkeypatch.setitem(REGISTRY, "fake", ("fake_backend", name, (), "core"))

    use()
    return use


def slow_drift(t: float) -> float:
    """The machine's speed over virtual time (ms): +-30% with a period of 4 s. A build of the tiny
    space lasts ~2.5 s (loads take 60 ms), a group ~0.3 s, a round ~7 ms, in which the speed
    changes by at most 0.4%."""
    return 1.0 + 0.3 * math.sin(2 * math.pi * t / 4000.0)


def timed_as(table: Table, key: str) -> float:
    """What the entry measured as timed: its ratio times the reference's median in its group."""
    entry = table.entries[key]
    group = entry.get("position", "stem+head")
    (median,) = [g["median_ms"] for g in table.meta["reference_level"]["groups"] if g["group"] == group]
    return float(entry["ratio"]["median"]) * median


def test_the_reference_network_has_every_position_and_the_cheapest_op():
    space, macro = builtin().spaces["latency19"], builtin().macros["latency"]
    definition = reference_definition(space, macro, 1.0)
    assert definition["op"] == "dw_k3_t1" == space.ops[reference_op(space, macro, 1.0)].name
    slots = macro.slots(1.0)
    placed = [s.position for s, ops in zip(slots, definition["cells"]) if ops]
    assert placed == macro.positions(1.0)  # each position once, in network order
    assert all(ops in ([], [0]) for ops in definition["cells"])


def test_slow_drift_during_a_build_cancels(tmp_path):
    steady = build(tmp_path / "steady.json", FakeBackend())
    drifting = build(tmp_path / "drifting.json", DriftingBackend(slow_drift))
    lo, hi = drifting.meta["reference_level"]["range"]
    assert hi / lo > 1.2  # the machine's speed moved by over 20% between groups
    assert steady.meta["reference_level"]["range"] == [1.0, 1.0]
    off_as_timed = 0
    for key, entry in steady.entries.items():
        ratio = drifting.entries[key]["ratio"]["median"]
        assert ratio == pytest.approx(entry["ratio"]["median"], rel=0.01), key
        assert drifting.entries[key]["latency"]["median"] == pytest.approx(
            ratio * drifting.meta["reference_level"]["level_ms"], rel=1e-6)
        assert drifting.entries[key]["latency"].get("flags") is None  # nothing to re-measure
        # negative control: as timed, the entries carry their group's state
        off_as_timed += abs(timed_as(drifting, key) / timed_as(steady, key) - 1) > 0.1
    assert off_as_timed >= len(steady.entries) // 4


def test_two_builds_in_a_row_on_a_drifting_machine_agree_through_the_reference(tmp_path):
    first = build(tmp_path / "a.json", DriftingBackend(slow_drift))
    later = DriftingBackend(slow_drift)
    later.clock.t = 700.0  # the second build starts in another part of the drift
    second = build(tmp_path / "b.json", later)
    levels = first.meta["reference_level"]["level_ms"], second.meta["reference_level"]["level_ms"]
    assert abs(levels[1] / levels[0] - 1) > 0.02  # the two builds ran in different states
    for key, entry in first.entries.items():
        other = second.entries[key]
        assert other["ratio"]["median"] == pytest.approx(entry["ratio"]["median"], rel=0.01), key
        assert other["latency"]["median"] / levels[1] == pytest.approx(entry["latency"]["median"] / levels[0],
                                                                       rel=0.01)


def test_a_bursty_machine_gets_a_bounded_remeasurement_and_flags(tmp_path):
    # 2x bursts every other 2.5 ms: faster than a round, so the entries' and the reference's samples
    # are hit unevenly and the ratios themselves scatter
    bursty = DriftingBackend(lambda t: 2.0 if int(t / 2.5) % 2 else 1.0)
    start = time.monotonic()
    table = build(tmp_path / "bursty.json", bursty, protocol=Protocol(**{**QUICK.to_dict(),
                                                                          "calibration_architectures": 0}))
    assert time.monotonic() - start < 60
    flagged = [k for k, e in table.entries.items() if e["latency"].get("flags")]
    assert len(flagged) > len(table.entries) // 2
    assert all(e["latency"]["flags"][0] == "remeasured" for k, e in table.entries.items() if k in flagged)
    assert all(e["latency"].get("flags") == e["ratio"].get("flags") for e in table.entries.values())
    # bounded: a graph is timed in at most 1 + max_remeasure attempts, each a warm-up and `rounds`
    # samples of at most ceil(min_sample_ms / its time) runs (the reference: one more, its priming
    # run, per sample; and one set of attempts per group)
    def most_runs(runner, attempts, primed=False):
        per_sample = math.ceil(QUICK.min_sample_ms / runner.ms)
        return attempts * (per_sample + 1 + QUICK.rounds * (per_sample + primed))

    reference, *entries = bursty.runners
    attempts = 1 + QUICK.max_remeasure
    assert all(r.runs <= most_runs(r, attempts) for r in entries)
    assert reference.runs <= len(table.meta["reference_level"]["groups"]) * most_runs(reference, attempts, True)
    assert sum(r.runs > most_runs(r, 1) for r in entries) >= len(flagged)  # those were re-measured


class Interrupted(FakeBackend):
    """The fake device, killed (KeyboardInterrupt) at its `after`-th load."""

    def __init__(self, after: int):
        super().__init__()
        self.after = after

    def load(self, module, input_shapes):
        self.after -= 1
        if self.after < 0:
            raise KeyboardInterrupt
        return super().load(module, input_shapes)


def test_a_resumed_build_refers_to_the_same_reference_and_says_how_the_machine_changed(tmp_path, fake_cli, capsys):
    single = build(tmp_path / "single.json", FakeBackend(), protocol=Protocol(rounds=3))
    out = tmp_path / "t.json"
    with pytest.raises(KeyboardInterrupt):
        build(out, Interrupted(after=14), protocol=Protocol(rounds=3))  # the reference, then 2 of 6 groups
    part = Table.load(out)
    assert 0 < len(part.entries) < len(single.entries) and not part.meta["complete"]
    fake_cli("SlowerFakeBackend")  # the machine now runs 13% slower
    assert main(["table", "build", "--space", TINY, "--macro", TINY, "--backend", "fake", "--batch", "2",
                 "--rounds", "3", "-o", str(out), "--resume", "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "resumed 1 time(s) (after resume 1 the machine ran 1.13x slower than before)" in said
    table = Table.load(out)
    assert table.meta["complete"]
    assert {g["resumed"] for g in table.meta["reference_level"]["groups"]} == {0, 1}
    for key, entry in single.entries.items():
        assert table.entries[key]["ratio"] == entry["ratio"], key  # the same ratios in either state
        assert table.entries[key]["latency"]["median"] == pytest.approx(
            entry["ratio"]["median"] * table.meta["reference_level"]["level_ms"], rel=1e-6)


def test_predict_check_says_how_the_machine_runs_against_the_build(tmp_path, fake_cli, capsys):
    path = tmp_path / "t.json"
    table = build(path, FakeBackend())
    arch = f"{TINY}:tinynet"
    assert main(["predict", "--table", str(path), arch, "--check"]) == 0
    assert "the machine now runs as fast as when the table was built (within 0.5%)" in capsys.readouterr().out
    fake_cli("SlowerFakeBackend")
    assert main(["predict", "--table", str(path), arch, "--check"]) == 0
    out = capsys.readouterr().out
    assert "the machine now runs 1.13x slower than when the table was built" in out
    assert "the reference network (dw_k5_t1 at every position)" in out
    assert main(["predict", "--table", str(path), arch, "--check", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["check"]["vs_table"] == pytest.approx(1.13, rel=1e-3)
    assert result["check"]["latency_ms_now"] == pytest.approx(1.13 * result["latency_ms"], rel=1e-3)
    assert result["latency_ms"] == predict(table, resolve_architecture(arch))["latency_ms"]  # not adjusted
    # another device: refused, saying why
    other = Table.load(path)
    other.meta["device"] = dict(other.meta["device"], name="Fake GPU 2")
    other.save(tmp_path / "other.json")
    assert main(["predict", "--table", str(tmp_path / "other.json"), arch, "--check"]) == 1
    assert "compares a device with its own table only" in capsys.readouterr().err


def as_format_1(table: Table, stem_ms: float) -> Table:
    """The table as the drift-probe protocol wrote it: entries as timed, a probe baseline, version 1."""
    meta = {k: v for k, v in table.meta.items() if k not in ("reference", "reference_level")}
    meta["probe_baseline"] = {"count": 15, "min": stem_ms, "median": stem_ms, "mean": stem_ms, "std": 0.0, "cov": 0.0}
    entries = {k: {n: v for n, v in e.items() if n != "ratio"} for k, e in table.entries.items()}
    return Table(meta, entries, version=1)


def test_tables_of_format_1_are_read_checked_and_not_extended(tmp_path, fake_cli, capsys):
    built = build(tmp_path / "new.json", FakeBackend())
    stem_ms = built.entries["stem"]["latency"]["median"]  # the fake stem times the same alone
    old = as_format_1(built, stem_ms)
    path = tmp_path / "old.json"
    old.save(path)
    assert json.loads(path.read_text())["version"] == 1
    loaded = Table.load(path)
    assert loaded.version == 1
    arch = resolve_architecture(f"{TINY}:tinynet")
    assert predict(loaded, arch)["latency_ms"] == pytest.approx(predict(built, arch)["latency_ms"], rel=1e-6)
    reference = reference_of(loaded)
    assert reference.level_ms == stem_ms and "drift probe" in reference.description
    fake_cli("SlowerFakeBackend")
    check = check_machine(loaded)
    assert check["vs_table"] == pytest.approx(1.13, rel=1e-3) and "drift probe" in check["detail"]
    assert main(["table", "show", str(path)]) == 0
    assert "format 1: entries as timed, with the drift probe" in capsys.readouterr().out
    with pytest.raises(HwnasError, match="cannot resume .* format 1, measured with the drift-probe protocol"):
        build(path, FakeBackend(), resume=True)
    with pytest.raises(HwnasError, match="cannot calibrate .* format 1"):
        calibrate_file(path, progress=False)
    part = build(tmp_path / "p1.json", FakeBackend(), shard=Shard(1, 2))
    with pytest.raises(HwnasError, match="old is a part of format 1"):
        merge([("p1", part), ("old", as_format_1(part, stem_ms))])
    raw = json.loads(path.read_text())
    raw["version"] = 3
    path.write_text(json.dumps(raw))
    with pytest.raises(HwnasError, match="version 3 .* newer than this hwnas reads"):
        Table.load(path)


def test_the_shipped_table_of_format_1_still_prices_nsenet_gpu():
    table = Table.load(REPO / "latency_tables" / "latency19_ort-cpu_b16.json")
    assert table.version == 1 and "reference" not in table.meta
    result = predict(table, builtin().networks["nsenet_gpu"], batch=16)
    assert result["latency_ms"] > 0
    assert reference_of(table).level_ms == Stats.from_dict(table.meta["probe_baseline"]).median


def test_the_calibration_says_what_it_cost(tmp_path):
    table = build(tmp_path / "t.json", FakeBackend())
    calibration = table.meta["calibration"]
    assert calibration["rounds"] == QUICK.network_rounds  # a steady device: the fewest rounds
    assert calibration["precision"] == 0.0 and calibration["seconds"] >= 0
    assert calibration["reference_vs_level"] == 1.0
    drifting = build(tmp_path / "d.json", DriftingBackend(slow_drift))
    # the calibration networks are referred to the level too: on the drifting machine the factor is the steady one,
    # although the machine ran at another speed during the calibration than during the entries
    assert abs(drifting.meta["calibration"]["reference_vs_level"] - 1) > 0.05
    assert drifting.meta["calibration"]["factor"] == pytest.approx(calibration["factor"], rel=0.01)
    assert drifting.meta["calibration"]["ratios"] == pytest.approx(calibration["ratios"], rel=0.01)
