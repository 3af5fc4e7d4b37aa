"""Sharded table builds: slicing the plan, merging the parts, refusing parts that do not belong together."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hwnas.cli.main import main
from hwnas.costs import Cost
from hwnas.errors import HwnasError
from hwnas.profiling.backends import REGISTRY, Backend, get_backend
from hwnas.profiling.build import build_table, calibrate_table
from hwnas.profiling.entries import EntrySpec, plan_groups
from hwnas.profiling.predict import predict
from hwnas.profiling.protocol import Protocol
from hwnas.profiling.shards import Shard, assign, entry_weights, merge, owned
from hwnas.profiling.table import Table
from hwnas.spaces import builtin, resolve_architecture, resolve_macro, resolve_space

from conftest import REPO
from fake_backend import FakeBackend

TINY = str(REPO / "tests" / "data" / "tiny.json")
QUICK = Protocol(warmup_ms=1.0, warmup_runs=1, min_sample_ms=1.0, rounds=3, network_rounds=3,
                 calibration_architectures=2)
# What a merged table's metadata may differ in from a single build's: when it was written, the
# parts it came from, and the reference's groups (a position cut between two shards is two groups;
# each group names its shard). Everything else (the reference level and the calibration, but for
# the seconds it took, included) is equal when the measurements are deterministic.
MAY_DIFFER = {"created", "updated", "shards", "reference_level"}


def tiny() -> tuple[Any, Any]:
    return resolve_space(TINY), resolve_macro(TINY)


def build(path: Any, backend: Backend | None = None, shard: str | None = None, **kw: Any) -> Table:
    space, macro = tiny()
    return build_table(space, macro, 1.0, backend or FakeBackend(), 2, path, protocol=kw.pop("protocol", QUICK),
                       progress=False, shard=Shard.parse(shard) if shard else None, **kw)


def without(meta: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    out = {k: v for k, v in meta.items() if k not in keys}
    if "calibration" in out:
        out["calibration"] = {k: v for k, v in out["calibration"].items() if k != "seconds"}
    if "reference_level" in meta:
        out["reference_level_ms"] = meta["reference_level"]["level_ms"]
    return out


@pytest.mark.parametrize("space,macro", [("latency19", "latency"), ("flops27", "flops"), ("tiny3", "tiny")])
def test_slices_are_contiguous_and_balanced(space, macro):
    if space == "tiny3":
        sp, mc = tiny()
    else:
        sp, mc = builtin().spaces[space], builtin().macros[macro]
    groups = plan_groups(sp, mc, 1.0, 16)
    keys = [e.key for g in groups for e in g]
    weights = entry_weights(groups)
    macs = [e.cost.macs for g in groups for e in g]
    # half fixed per entry, half by MACs: each entry's weight is proportional to 1/n + macs/total
    n, total_macs = len(keys), sum(macs)
    for w, m in zip(weights, macs):
        assert w * total_macs * n == pytest.approx(sum(weights) * (total_macs + n * m) / 2, rel=1e-12)
    for count in range(1, 6):
        shards = [Shard(i, count) for i in range(1, count + 1)]
        parts = [owned(groups, s) for s in shards]
        assert sorted(k for p in parts for k in p) == sorted(keys)  # every entry exactly once
        assert [k for p in parts for k in p] == keys  # contiguous slices, in plan order
        cost = {i: 0 for i in range(1, count + 1)}
        for w, s in zip(weights, assign(groups, count)):
            cost[s] += w
        # each shard is within one entry's cost of its even share
        assert all(abs(c - sum(weights) / count) <= max(weights) for c in cost.values())
    with pytest.raises(HwnasError, match=f"at most {len(keys)}"):
        assign(groups, len(keys) + 1)


def best_contiguous_makespan(weights: list[int], count: int) -> int:
    """Brute force over every cut of `weights` into at most `count` contiguous slices."""
    from itertools import combinations

    best = sum(weights)
    for cuts in combinations(range(1, len(weights)), min(count, len(weights)) - 1):
        bounds = (0, *cuts, len(weights))
        best = min(best, max(sum(weights[a:b]) for a, b in zip(bounds, bounds[1:])))
    return best


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.integers(0, 10**9), min_size=1, max_size=4), min_size=1, max_size=4), st.data())
def test_slices_against_the_best_contiguous_cut(macs, data):
    groups = [[EntrySpec(f"e{i}.{j}", "op", nn.Identity, ((1,),), Cost(m)) for j, m in enumerate(g)]
              for i, g in enumerate(macs)]
    weights = entry_weights(groups)
    count = data.draw(st.integers(1, len(weights)))
    shards = assign(groups, count)
    assert shards == sorted(shards) and set(shards) <= set(range(1, count + 1))  # contiguous, numbered 1..N
    cost = [sum(w for w, s in zip(weights, shards) if s == i) for i in range(1, count + 1)]
    assert all(abs(c - sum(weights) / count) <= max(weights) for c in cost)
    assert max(cost) <= best_contiguous_makespan(weights, count) + max(weights)
    assert shards == assign(groups, count)  # the same slices every time


def test_two_macs_shards_merge_to_a_single_build(tmp_path):
    sp, mc = builtin().spaces["latency19"], builtin().macros["latency"]
    none = get_backend("none")
    single = build_table(sp, mc, 1.0, none, 16, tmp_path / "single.json", progress=False)
    parts = [build_table(sp, mc, 1.0, none, 16, tmp_path / f"p{i}.json", progress=False, shard=Shard(i, 2))
             for i in (2, 1)]
    for i, p in zip((2, 1), parts):
        assert p.meta["shard"]["index"] == i and p.meta["complete"]
        assert list(p.entries) == p.meta["shard"]["keys"]
    assert not set(parts[0].entries) & set(parts[1].entries)
    merged = merge([(str(tmp_path / "p2.json"), Table.load(tmp_path / "p2.json")),
                    (str(tmp_path / "p1.json"), Table.load(tmp_path / "p1.json"))])
    assert list(merged.entries) == list(single.entries)  # same keys, same order
    assert merged.entries == single.entries
    assert without(merged.meta, MAY_DIFFER) == without(single.meta, MAY_DIFFER)
    assert [s["shard"] for s in merged.meta["shards"]] == ["1/2", "2/2"]
    assert sum(s["entries"] for s in merged.meta["shards"]) == len(single.entries)
    assert merged.meta["complete"] and "shard" not in merged.meta


def test_sharded_latency_build_with_calibration_equals_a_single_build(tmp_path):
    single = build(tmp_path / "single.json")
    assert single.meta["complete"] and "calibration" in single.meta
    parts = [(f"p{i}", build(tmp_path / f"p{i}.json", shard=f"{i}/3")) for i in (1, 2, 3)]
    assert all("calibration" not in p.meta and p.meta["complete"] for _, p in parts)
    merged = merge(parts)
    assert not merged.meta["complete"] and "calibration" not in merged.meta  # calibration comes after the merge
    with pytest.raises(HwnasError, match="shard 2/3 of a sharded build"):
        predict(parts[1][1], resolve_architecture(TINY))
    calibrate_table(merged, FakeBackend(), QUICK, 0, tmp_path / "merged.json", progress=False)
    assert merged.entries == single.entries  # ratios and latency statistics included
    assert without(merged.meta, MAY_DIFFER) == without(single.meta, MAY_DIFFER)
    assert Table.load(tmp_path / "merged.json").meta["complete"]
    arch = resolve_architecture(TINY)
    assert predict(merged, arch) == predict(single, arch)


@pytest.mark.parametrize("other,field", [(dict(backend=FakeBackend(device="Fake GPU 2")), "device"),
                                         (dict(backend=FakeBackend(version="1.1")), "backend"),
                                         (dict(protocol=Protocol(**{**QUICK.to_dict(), "rounds": 4})), "protocol")])
def test_parts_measured_differently_are_refused(tmp_path, other, field):
    first = build(tmp_path / "p1.json", shard="1/2")
    second = build(tmp_path / "p2.json", shard="2/2", **other)
    with pytest.raises(HwnasError, match=rf"p1 vs p2: measured differently \({field}: "):
        merge([("p1", first), ("p2", second)])


def test_parts_from_devices_that_ran_at_different_speeds_are_re_anchored_through_the_reference(tmp_path, capsys):
    single = build(tmp_path / "single.json", protocol=replace(QUICK, calibration_architectures=0))
    first = build(tmp_path / "p1.json", shard="1/2")
    slow = build(tmp_path / "p2.json", shard="2/2", backend=FakeBackend(slowdown=1.3))  # 30% slower throughout
    merged = merge([("p2", slow), ("p1", first)])
    levels = [s["reference_level_ms"] for s in merged.meta["shards"]]
    assert levels[1] == pytest.approx(1.3 * levels[0])  # each part's reference ran at its device's speed
    assert {g["shard"] for g in merged.meta["reference_level"]["groups"]} == {"1/2", "2/2"}
    level = merged.meta["reference_level"]["level_ms"]
    assert levels[0] <= level <= levels[1]  # one level for all, the median over the parts' groups
    for key, entry in merged.entries.items():
        # the slow device's ratios are the fast one's: re-anchored, every entry is as one device measured it
        assert entry["ratio"] == single.entries[key]["ratio"]
        assert entry["latency"]["median"] == pytest.approx(single.entries[key]["latency"]["median"]
                                                           * level / levels[0], rel=1e-6)
    # negative control: as its part recorded them (at its own level), the slow part's entries are 30% off
    key = next(iter(slow.entries))
    assert slow.entries[key]["latency"]["median"] == pytest.approx(1.3 * single.entries[key]["latency"]["median"],
                                                                   rel=1e-6)
    assert main(["table", "merge", str(tmp_path / "p1.json"), str(tmp_path / "p2.json"), "-o",
                 str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "30.0% apart" in out and "one level" in out


def test_missing_overlapping_and_misnumbered_parts_are_refused(tmp_path):
    none = get_backend("none")
    p1, p2 = (build(tmp_path / f"p{i}.json", none, f"{i}/2") for i in (1, 2))
    whole = build(tmp_path / "whole.json", none)
    assert merge([("p1", p1), ("p2", p2)]).entries == whole.entries
    with pytest.raises(HwnasError, match="whole is not a part of a sharded build"):
        merge([("p1", p1), ("whole", whole)])
    with pytest.raises(HwnasError, match="shard 2/2 missing"):
        merge([("p1", p1)])
    with pytest.raises(HwnasError, match=r"shard 1/2 is given twice \(p1 and again\)"):
        merge([("p1", p1), ("again", p1), ("p2", p2)])
    with pytest.raises(HwnasError, match="the same N"):
        merge([("p1", p1), ("q", build(tmp_path / "q.json", none, "2/3"))])
    lost = Table(dict(p2.meta), dict(p2.entries))
    key = next(iter(lost.entries))
    del lost.entries[key]
    with pytest.raises(HwnasError, match=rf"1 entry is missing \(first: '{key}'\) from p2 \(shard 2/2\)"):
        merge([("p1", p1), ("p2", lost)])
    doubled = Table(dict(p1.meta), {**p1.entries, key: p2.entries[key]})
    with pytest.raises(HwnasError, match=rf"the entry '{key}' is in both p1 and p2"):
        merge([("p1", doubled), ("p2", p2)])
    # a part cannot be resumed as another shard, nor as a whole table
    with pytest.raises(HwnasError, match="it is shard 1/2, not shard 2/2"):
        build(tmp_path / "p1.json", none, "2/2", resume=True)
    with pytest.raises(HwnasError, match=r"it is shard 1/2, not a whole table \(no --shard\)"):
        build(tmp_path / "p1.json", none, resume=True)
    # --resume starts a part that does not exist yet (a requeued job runs one command)
    assert build(tmp_path / "fresh.json", none, "1/2", resume=True).entries == p1.entries


def _shard_cmd(out: Any, shard: str, *extra: str) -> list[str]:
    """The hwnas command, with the fake backend registered (as 'fake'; each load takes a while)."""
    return [sys.executable, str(REPO / "tests" / "fake_backend.py"), "table", "build", "--space", TINY, "--macro",
            TINY, "--backend", "fake", "--batch", "2", "--rounds", "3", "--shard", shard, "-o",
            str(out), "--quiet", *extra]


def test_killed_shard_resumes_and_the_merged_calibrated_table_equals_a_single_build(tmp_path, capsys, monkeypatch):
    part1, part2, merged = tmp_path / "p1.json", tmp_path / "p2.json", tmp_path / "t.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(_shard_cmd(part1, "1/2"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    other = subprocess.Popen(_shard_cmd(part2, "2/2"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=env)  # the other shard, at the same time
    snapshot = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if part1.exists():
            table = json.loads(part1.read_text())
            if table["entries"]:
                snapshot = table
                os.kill(proc.pid, signal.SIGKILL)
                break
        time.sleep(0.01)
    proc.wait()
    assert snapshot is not None, "shard 1/2 wrote no entry before finishing or timing out"
    assert other.wait(timeout=300) == 0, other.communicate()[1]
    killed = json.loads(part1.read_text())
    assert not killed["meta"]["complete"] and set(killed["entries"]) < set(killed["meta"]["shard"]["keys"])
    # an unfinished part is refused by the merge, naming the shard to finish
    assert main(["table", "merge", str(part1), str(part2), "-o", str(merged)]) == 1
    err = capsys.readouterr().err
    assert "(shard 1/2)" in err and "--resume" in err and not merged.exists()
    resumed = subprocess.run(_shard_cmd(part1, "1/2", "--resume"), capture_output=True, text=True, env=env,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    final = json.loads(part1.read_text())
    assert final["meta"]["complete"] and list(final["entries"]) == final["meta"]["shard"]["keys"]
    for key, entry in killed["entries"].items():
        assert final["entries"][key] == entry  # finished entries were kept
    assert main(["table", "merge", str(part2), str(part1), "-o", str(merged), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["entries"] == 6 * 5 + 2 and not summary["complete"]
    assert [s["shard"] for s in summary["shards"]] == ["1/2", "2/2"]
    assert main(["table", "merge", str(part1), str(part2), "-o", str(merged)]) == 1
    assert "--force" in capsys.readouterr().err
    monkeypatch.setitem(REGISTRY, "fake", ("fake_backend", "FakeBackend", (), "core"))
    assert main(["table", "calibrate", str(merged), "--quiet"]) == 0
    # the single build the shards stand for: the command line's protocol, in this process
    single = build(tmp_path / "single.json", protocol=Protocol(rounds=3))
    table = Table.load(merged)
    assert table.meta["complete"] and table.meta["calibration"]["architectures"] == 4
    assert list(table.entries) == list(single.entries) and table.entries == single.entries
    assert without(table.meta, MAY_DIFFER) == without(single.meta, MAY_DIFFER)


def test_calibrate_refuses_parts_unfinished_tables_and_other_devices(tmp_path, capsys, monkeypatch):
    none = get_backend("none")
    build(tmp_path / "p1.json", none, "1/2")
    assert main(["table", "calibrate", str(tmp_path / "p1.json")]) == 1
    assert "merge all parts" in capsys.readouterr().err
    build(tmp_path / "whole.json", none)
    assert main(["table", "calibrate", str(tmp_path / "whole.json")]) == 1
    assert "holds no latency" in capsys.readouterr().err
    table = Table.load(tmp_path / "whole.json")
    del table.entries["stem"]
    table.save(tmp_path / "lacking.json")
    assert main(["table", "calibrate", str(tmp_path / "lacking.json")]) == 1
    assert "lacks 1 entry (first: 'stem')" in capsys.readouterr().err
    elsewhere = Table(dict(table.meta, backend={"name": "ort", "threads": 1}, precision="fp32", statistic="median",
                           device={"type": "gpu", "name": "NVIDIA GeForce GTX TITAN Xp"}),
                      dict(Table.load(tmp_path / "whole.json").entries))
    elsewhere.save(tmp_path / "elsewhere.json")
    assert main(["table", "calibrate", str(tmp_path / "elsewhere.json")]) == 1
    assert "cannot calibrate it" in capsys.readouterr().err
    # the same device with other software: the backend of the current device is version 1.0
    monkeypatch.setitem(REGISTRY, "fake", ("fake_backend", "FakeBackend", (), "core"))
    parts = [(f"p{i}", build(tmp_path / f"v{i}.json", FakeBackend(version="0.9"), f"{i}/2")) for i in (1, 2)]
    merge(parts).save(tmp_path / "older.json")
    assert main(["table", "calibrate", str(tmp_path / "older.json")]) == 1
    err = capsys.readouterr().err
    assert "cannot calibrate" in err and "on the current device" in err and 'backend: {"name": "fake"' in err
    assert "calibration" not in Table.load(tmp_path / "older.json").meta


@pytest.mark.parametrize("text,why", [("3/2", "I must be in 1..N"), ("0/2", "I must be in 1..N"),
                                      ("1of2", "is not I/N"), ("2", "is not I/N")])
def test_a_bad_shard_is_a_usage_error(tmp_path, capsys, text, why):
    code = main(["table", "build", "--space", TINY, "--macro", TINY, "--backend", "none", "--shard", text, "-o",
                 str(tmp_path / "t.json")])
    err = capsys.readouterr().err
    assert code == 2 and why in err and err.count("\n") == 1
    assert not (tmp_path / "t.json").exists()


# -- refusals: one line, nothing written -----------------------------------------------------------

def _parts(folder):
    """Two parts (1/2, 2/2), a whole table, a part of a three-way split, and files of other kinds."""
    none = get_backend("none")
    for name, shard in (("p1", "1/2"), ("p2", "2/2"), ("whole", None), ("q1", "1/3")):
        build(folder / f"{name}.json", none, shard)
    (folder / "arch.json").write_text(json.dumps({"networks": {}}))
    (folder / "cut.json").write_text((folder / "p2.json").read_text()[:400])

    def edited(name, change):
        doc = json.loads((folder / "p2.json").read_text())
        change(doc)
        (folder / f"{name}.json").write_text(json.dumps(doc))

    edited("index_x", lambda d: d["meta"]["shard"].update(index="x"))
    edited("count_0", lambda d: d["meta"]["shard"].update(count=0))
    edited("shard_text", lambda d: d["meta"].update(shard="2/2"))
    edited("shard_empty", lambda d: d["meta"].update(shard={}))
    edited("keys_5", lambda d: d["meta"]["shard"].update(keys=5))
    edited("keys_other", lambda d: d["meta"]["shard"].update(keys=d["meta"]["shard"]["keys"][1:]))
    p1 = json.loads((folder / "p1.json").read_text())
    key = next(iter(p1["entries"]))

    def stray(d):  # shard 2 holding one of shard 1's entries, shard 1 without it
        d["entries"][key] = p1["entries"][key]
    edited("stray", stray)
    del p1["entries"][key]
    (folder / "p1_less.json").write_text(json.dumps(p1))


REFUSALS = {  # command (files of _parts; {out} the output) -> words of the one line
    "merge: a missing part": (["table", "merge", "p1", "-o", "{out}"], "shard 2/2 missing"),
    "merge: a missing file": (["table", "merge", "p1", "nope", "-o", "{out}"], "no such file"),
    "merge: a part twice": (["table", "merge", "p1", "p1", "p2", "-o", "{out}"], "given twice"),
    "merge: a whole table": (["table", "merge", "p1", "whole", "-o", "{out}"], "not a part of a sharded build"),
    "merge: another N": (["table", "merge", "p1", "q1", "-o", "{out}"], "the same N"),
    "merge: a cut file": (["table", "merge", "p1", "cut", "-o", "{out}"], "ends early"),
    "merge: not a table": (["table", "merge", "p1", "arch", "-o", "{out}"], "not an hwnas lookup table"),
    "merge: index not a number": (["table", "merge", "p1", "index_x", "-o", "{out}"], "meta.shard.index"),
    "merge: count 0": (["table", "merge", "p1", "count_0", "-o", "{out}"], "meta.shard.count"),
    "merge: shard as text": (["table", "merge", "p1", "shard_text", "-o", "{out}"], "meta.shard must be an object"),
    "merge: shard empty": (["table", "merge", "p1", "shard_empty", "-o", "{out}"], "meta.shard.count"),
    "merge: keys not a list": (["table", "merge", "p1", "keys_5", "-o", "{out}"], "meta.shard.keys"),
    "merge: foreign keys": (["table", "merge", "p1", "keys_other", "-o", "{out}"], "records other entries"),
    "merge: a stray entry": (["table", "merge", "p1_less", "stray", "-o", "{out}"], "of another shard"),
    "build: more shards than entries": (["table", "build", "--space", TINY, "--macro", TINY, "--backend", "none",
                                         "--shard", "999/999", "-o", "{out}"], "use at most"),
    "build: shard 0": (["table", "build", "--space", TINY, "--macro", TINY, "--backend", "none", "--shard", "0/2",
                        "-o", "{out}"], "I must be in 1..N"),
    "calibrate: a part": (["table", "calibrate", "p1"], "merge all parts"),
    "calibrate: a MACs table": (["table", "calibrate", "whole"], "holds no latency"),
    "calibrate: a missing file": (["table", "calibrate", "new/t"], "no such file"),
    "calibrate: not a table": (["table", "calibrate", "arch"], "not an hwnas lookup table"),
}


@pytest.fixture(scope="module")
def parts_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parts")
    _parts(folder)
    return folder


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else "folder" for p in folder.rglob("*")}


@pytest.mark.parametrize("case", REFUSALS)
def test_refusals_are_one_line_and_write_nothing(capsys, parts_folder, tmp_path, case):
    import shutil

    argv, words = REFUSALS[case]
    folder = shutil.copytree(parts_folder, tmp_path / "parts")
    files_of = {p.stem for p in folder.iterdir()} | {"nope", "new/t"}
    before = _snapshot(folder)
    out = folder / "new" / "merged.json"  # in a folder that does not exist yet
    argv = [str(out) if a == "{out}" else str(folder / f"{a}.json") if a in files_of else a for a in argv]
    code = main(argv)
    err = capsys.readouterr().err
    assert code in (1, 2) and err.count("\n") == 1 and words in err, err
    assert "internal error" not in err and "Traceback" not in err
    assert _snapshot(folder) == before  # no output, no folder, no lock


def test_the_parts_merge_when_nothing_is_wrong(parts_folder, tmp_path):
    """The control of the refusals above: the same parts, unbroken, merge."""
    out = tmp_path / "new" / "merged.json"
    assert main(["table", "merge", str(parts_folder / "p1.json"), str(parts_folder / "p2.json"), "-o", str(out)]) == 0
    assert Table.load(out).entries == Table.load(parts_folder / "whole.json").entries
