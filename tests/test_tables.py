"""Lookup tables: MACs/params tables, prediction and its refusals, kill-and-resume, validation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from hwnas.costs import network_cost, op_cost
from hwnas.errors import HwnasError
from hwnas.profiling.backends import get_backend
from hwnas.profiling.build import build_table
from hwnas.profiling.predict import predict
from hwnas.profiling.protocol import Protocol
from hwnas.profiling.table import Table, op_key
from hwnas.profiling.validate import metrics, validate
from hwnas.spaces import builtin, resolve_architecture, resolve_macro, resolve_space
from hwnas.spaces.sampling import slot_architecture

from conftest import REPO

TINY = str(REPO / "tests" / "data" / "tiny.json")
QUICK = Protocol(warmup_ms=5.0, warmup_runs=1, min_sample_ms=1.0, rounds=3, network_rounds=3,
                 calibration_architectures=2)


@pytest.mark.parametrize("space,macro,scale,net", [("latency19", "latency", 1.0, "nsenet_gpu"),
                                                   ("flops27", "flops", 1.04, "nsenet27"),
                                                   ("flops27+second45", "flops", 1.045, "nsenet")])
def test_macs_table_prices_the_published_networks(tmp_path, space, macro, scale, net):
    sp, mc = builtin().spaces[space], builtin().macros[macro]
    table = build_table(sp, mc, scale, get_backend("none"), 16, tmp_path / "t.json", progress=False)
    positions = mc.positions(scale)
    assert len(table.entries) == len(positions) * (len(sp.ops) + 2) + 2
    for pos in positions[:3]:
        for op in sp.ops:
            assert table.entries[op_key(op, pos)]["macs"] == op_cost(op, pos).macs
    reloaded = Table.load(tmp_path / "t.json")
    result = predict(reloaded, builtin().networks[net], batch=16)
    cost = network_cost(builtin().networks[net]).total
    assert (result["macs"], result["params"]) == (cost.macs, cost.params)
    assert "latency_ms" not in result


def test_predict_refuses_what_the_table_cannot_price(latency19_macs):
    with pytest.raises(HwnasError, match="uses space flops27"):
        predict(latency19_macs, builtin().networks["nsenet27"])
    with pytest.raises(HwnasError, match="measured at batch 16, not 32"):
        predict(latency19_macs, builtin().networks["nsenet_gpu"], batch=32)
    scaled = dict(builtin().networks["nsenet_gpu"].to_dict(), scale=1.5)
    from hwnas.spaces.catalog import catalog_from_dict

    arch = catalog_from_dict({"networks": {"big": scaled}}, "big.json", builtin()).networks["big"]
    with pytest.raises(HwnasError, match="scale 1.5, the table was built at scale 1.0"):
        predict(latency19_macs, arch)


def test_a_refusal_leaves_the_table_as_it_was(latency19_macs):
    before = json.dumps(latency19_macs.to_dict(), sort_keys=True)
    for arch, batch in [(builtin().networks["nsenet27"], None), (builtin().networks["nsenet_gpu"], 32)]:
        with pytest.raises(HwnasError):
            predict(latency19_macs, arch, batch=batch)
    assert json.dumps(latency19_macs.to_dict(), sort_keys=True) == before


def test_existing_output_needs_resume(tmp_path, latency19_macs):
    path = tmp_path / "t.json"
    latency19_macs.save(path)
    with pytest.raises(HwnasError, match="exists; pass --resume"):
        build_table(builtin().spaces["latency19"], builtin().macros["latency"], 1.0, get_backend("none"), 16, path,
                    progress=False)
    with pytest.raises(HwnasError, match=r"cannot resume .*batch: 16 vs 8"):
        build_table(builtin().spaces["latency19"], builtin().macros["latency"], 1.0, get_backend("none"), 8, path,
                    resume=True, progress=False)


def test_unknown_backend_and_missing_tensorrt():
    with pytest.raises(HwnasError, match="unknown backend 'cuda'"):
        get_backend("cuda")
    with pytest.raises(HwnasError, match=r"pip install 'hwnas\[gpu\]'"):
        get_backend("tensorrt")


def test_not_a_table(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"spaces": {}}))
    with pytest.raises(HwnasError, match="not an hwnas lookup table"):
        Table.load(bad)


def _build_cmd(out, *extra):
    return [sys.executable, "-m", "hwnas.cli.main", "table", "build", "--space", TINY, "--macro", TINY,
            "--backend", "ort", "--batch", "2", "--rounds", "3", "-o", str(out), "--quiet", *extra]


@pytest.mark.slow
def test_kill_and_resume_loses_no_finished_entry(tmp_path):
    out = tmp_path / "tiny.json"
    proc = subprocess.Popen(_build_cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    snapshot = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists():
            table = json.loads(out.read_text())  # never a half-written file
            if table["entries"]:
                snapshot = table
                os.kill(proc.pid, signal.SIGKILL)
                break
        time.sleep(0.02)
    proc.wait()
    assert snapshot is not None, "the build wrote no entry before finishing or timing out"
    assert not snapshot["meta"]["complete"]
    killed = json.loads(out.read_text())
    assert killed["entries"].keys() >= snapshot["entries"].keys()
    resumed = subprocess.run(_build_cmd(out, "--resume"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    final = json.loads(out.read_text())
    assert final["meta"]["complete"]
    assert len(final["entries"]) == 6 * 5 + 2
    level = final["meta"]["reference_level"]["level_ms"]
    for key, entry in killed["entries"].items():
        # finished entries were kept, not re-measured: the same ratio to the reference, brought to
        # milliseconds with the level over all groups (before and after the resume)
        assert final["entries"][key]["ratio"] == entry["ratio"]
        assert final["entries"][key]["latency"]["median"] == pytest.approx(entry["ratio"]["median"] * level, rel=1e-6)
    # resuming with other settings is refused, and the file is left as it was
    other = subprocess.run(_build_cmd(out, "--resume", "--threads", "2"), capture_output=True, text=True)
    assert other.returncode == 1 and "cannot resume" in other.stderr and "threads" in other.stderr
    assert json.loads(out.read_text()) == final


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    """A profiled (onnxruntime) table of the tiny space, calibrated; tests must not mutate it."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.json"
    build_table(resolve_space(TINY), resolve_macro(TINY), 1.0, get_backend("ort"), 2, path, protocol=QUICK,
                progress=False)
    return path


@pytest.mark.slow
def test_tiny_build_is_complete_and_calibrated(tiny_table):
    table = Table.load(tiny_table)
    assert table.meta["complete"] and table.meta["backend"]["threads"] == 1
    calibration = table.meta["calibration"]
    assert calibration["architectures"] == QUICK.calibration_architectures == len(calibration["ratios"])
    result = predict(table, resolve_architecture(TINY))
    summed = sum(table.latency(k) for k in ("stem", "head"))
    for c in result["cells"]:
        summed += sum(table.latency(f"{o['name']}@{c['position']}") for o in c["ops"])
        summed += c["merge_ms"] / calibration["factor"]
    assert result["latency_ms_uncalibrated"] == pytest.approx(summed)
    assert result["latency_ms"] == pytest.approx(summed * calibration["factor"]) and result["latency_ms"] > 0


@pytest.mark.slow
def test_validate_as_timed(tiny_table):
    table = Table.load(tiny_table)
    report = validate(table, samples=3, seed=1, progress=False, reference=False)
    assert report["n"] == 3 and 0 <= report["within_10pct"] <= 1 and -1 <= report["spearman"] <= 1
    assert report["uncalibrated"]["n"] == 3 and report["calibration_factor"] == table.calibration_factor
    assert report["measured"] == "raw" and "raw" not in report and "reference" not in report
    assert "machine_vs_table" not in report  # nothing timed the machine's state
    assert all(s["measured_ms"] == s["raw_ms"] > 0 and "ratio" not in s for s in report["samples"])
    predicted = [s["predicted_ms"] for s in report["samples"]]
    assert {k: report[k] for k in metrics([1.0, 2.0], [1.0, 2.0])} == pytest.approx(
        metrics(predicted, [s["measured_ms"] for s in report["samples"]]))


@pytest.mark.slow
def test_recalibrate_retimes_the_builds_architectures(tiny_table):
    table = Table.load(tiny_table)
    calibration = table.meta["calibration"]
    again = validate(table, samples=2, seed=1, progress=False, recalibrate=True, reference=False)
    now = again["calibration_now"]
    assert now["seed"] == calibration["seed"] and now["cells"] == calibration["cells"]
    assert len(now["ratios"]) == QUICK.calibration_architectures
    measured = [s["measured_ms"] for s in again["samples"]]
    expected = metrics([s["predicted_uncalibrated_ms"] * now["factor"] for s in again["samples"]], measured)
    assert again["recalibrated"] == pytest.approx(expected)


@pytest.mark.slow
def test_validation_refers_each_network_to_the_tables_state_through_its_reference(tiny_table):
    # by default the table's reference network is timed in every round of every group (GROUP = 4
    # samples): each latency is the network's median ratio to it times the table's reference level
    table = Table.load(tiny_table)
    level = table.meta["reference_level"]["level_ms"]
    five = validate(table, samples=5, seed=2, progress=False)
    assert five["measured"] == "referred"
    ref = five["reference"]
    assert ref["level_ms"] == level and len(ref["groups_ms"]) == 2 and all(m > 0 for m in ref["groups_ms"])
    assert ref["vs_table"] == pytest.approx([m / level for m in ref["groups_ms"]], rel=1e-3)
    assert five["machine_vs_table"] == pytest.approx(sum(ref["groups_ms"]) / 2 / level, rel=1e-3)  # median of 2
    referred = [s["ratio"] * level for s in five["samples"]]
    assert [s["measured_ms"] for s in five["samples"]] == pytest.approx(referred)
    predicted = [s["predicted_ms"] for s in five["samples"]]
    assert {k: five[k] for k in metrics([1.0, 2.0], [1.0, 2.0])} == pytest.approx(metrics(predicted, referred))
    assert five["raw"] == pytest.approx(metrics(predicted, [s["raw_ms"] for s in five["samples"]]))
    # sparse networks, as the calibration draws them: mean branches per cell from 3 down to 1
    sparse = validate(table, samples=3, seed=2, progress=False, branches=(1.0, 3.0))
    density = [s["branches_per_cell"] for s in sparse["samples"]]
    assert density[0] == 3.0 and density[-1] < 2.0 and sparse["branches"] == [1.0, 3.0]
    with pytest.raises(HwnasError, match="0 < FEWEST <= MOST <= 3"):
        validate(table, samples=3, branches=(1.0, 4.0))


@pytest.mark.slow
def test_a_table_without_calibration_is_validated_against_its_reference(tiny_table):
    bare = Table.load(tiny_table)
    del bare.meta["calibration"]
    with pytest.raises(HwnasError, match="no calibration"):
        validate(bare, samples=3, recalibrate=True)
    assert validate(bare, samples=2, seed=3, progress=False)["measured"] == "referred"


@pytest.mark.slow
def test_validate_command_line(tiny_table, tmp_path):
    cli = [sys.executable, "-m", "hwnas.cli.main", "validate", "--table", str(tiny_table), "--samples", "2",
           "--quiet"]
    human = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert human.returncode == 0, human.stderr
    assert "vs latencies as timed" in human.stdout and "referred to the table's machine state" in human.stdout
    assert "meanwhile the machine ran" in human.stdout and "when the table was built" in human.stdout
    png = tmp_path / "v.png"
    machine = subprocess.run([*cli, "--no-reference", "--json", "--plot", str(png)], capture_output=True, text=True,
                             timeout=300)
    assert machine.returncode == 0, machine.stderr
    out = json.loads(machine.stdout)
    assert out["n"] == 2 and out["measured"] == "raw" and "reference" not in out
    assert png.read_bytes()[:4] == b"\x89PNG"  # matplotlib is in the dev extra


@pytest.mark.slow
def test_a_table_measured_on_another_device_is_refused(tiny_table):
    table = Table.load(tiny_table)
    table.meta["device"] = dict(table.meta["device"], name="NVIDIA GeForce GTX TITAN Xp")
    with pytest.raises(HwnasError, match="cannot validate it"):
        validate(table, samples=3)


def test_metrics_against_numpy_and_scipy():
    np = pytest.importorskip("numpy")
    stats = pytest.importorskip("scipy.stats")
    pred = [10.0, 12.0, 9.0, 20.0, 15.0, 15.0]
    meas = [11.0, 12.5, 8.0, 19.0, 18.0, 14.0]
    m = metrics(pred, meas)
    rel = np.abs(np.array(pred) - meas) / meas
    assert m["within_10pct"] == pytest.approx(np.mean(rel <= 0.1))
    assert m["mape"] == pytest.approx(rel.mean())
    assert m["rmse_ms"] == pytest.approx(np.sqrt(np.mean((np.array(pred) - meas) ** 2)))
    assert m["spearman"] == pytest.approx(stats.spearmanr(pred, meas).statistic)


def test_shipped_tables_are_named_from_any_folder(tmp_path, monkeypatch, capsys):
    """`Table.load("latency19_macs")` and `--table latency19_macs` read the shipped table from any
    folder; a file of that name in the folder wins; an unknown name lists the shipped ones."""
    import json as json_

    from hwnas.cli.main import main
    from hwnas.errors import HwnasError
    from hwnas.profiling.shipped import names
    from hwnas.profiling.table import Table

    monkeypatch.chdir(tmp_path)
    shipped = REPO / "latency_tables" / "latency19_macs.json"
    assert "latency19_macs" in names() and "latency19_ort-cpu_b16" in names()
    assert not [n for n in names() if "validation" in n]
    for ref in ("latency19_macs", "latency19_macs.json"):
        assert Table.load(ref).entries == Table.load(shipped).entries
    assert main(["predict", "--table", "latency19_macs", "nsenet_gpu", "--json"]) == 0
    assert json_.loads(capsys.readouterr().out)["macs"] > 0
    with pytest.raises(HwnasError, match="no such file or folder: latency19_mac; .*latency19_macs"):
        Table.load("latency19_mac")
    # a name is read, never written: calibrate (in place) refuses it, and writes nothing anywhere
    before = shipped.read_bytes()
    assert main(["table", "calibrate", "latency19_macs"]) == 1
    assert "names a table shipped with hwnas" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [] and shipped.read_bytes() == before
    mine = Table.load(shipped)
    del mine.entries["stem"]
    mine.save(tmp_path / "latency19_macs.json")
    assert "stem" not in Table.load("latency19_macs.json").entries  # the user's file, not the shipped one
