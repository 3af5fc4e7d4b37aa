"""The search's benchmark scripts at a tiny size: the comparison of searched architectures with
random ones of the same predicted latency, and its statistics."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import REPO
from tiny_search import fake_latency_table

BENCHMARKS = REPO / "benchmarks"


@pytest.fixture(scope="module")
def vs_random():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_search_vs_random

        yield bench_search_vs_random
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_paired_statistics_by_hand(vs_random):
    pytest.importorskip("scipy")
    searched = [0.80, 0.75, 0.90, 0.70, 0.85]
    random_mean = [0.78, 0.70, 0.91, 0.65, 0.80]
    st = vs_random.paired_statistics(searched, random_mean)
    diffs = [0.02, 0.05, -0.01, 0.05, 0.05]
    mean = sum(diffs) / 5
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 4)
    assert st["mean_difference"] == pytest.approx(mean) and st["sd"] == pytest.approx(sd)
    assert st["ci95"] == pytest.approx([mean - 2.7764451 * sd / math.sqrt(5), mean + 2.7764451 * sd / math.sqrt(5)])
    t = mean / (sd / math.sqrt(5))  # 2.67: two-sided p between 0.05 (t 2.776) and 0.1 (t 2.132), 4 df
    assert 0.05 < st["t_test_p"] < 0.1 and t == pytest.approx(8 / 3)
    assert (st["wins"], st["losses"]) == (4, 1)
    assert 0 < st["wilcoxon_p"] <= 1
    assert vs_random.pick([]) is None
    assert vs_random.pick([{"supernet_accuracy": 0.5, "cost": 2.0}, {"supernet_accuracy": 0.5, "cost": 3.0},
                           {"supernet_accuracy": 0.4, "cost": 4.0}])["cost"] == 3.0


def test_searched_against_random_runs_at_a_tiny_size(vs_random, tmp_path):
    """Two seeds of the whole comparison on the synthetic stand-in, with a table priced from MACs."""
    pytest.importorskip("scipy")
    from hwnas.spaces import builtin
    from hwnas.spaces.catalog import catalog_from_dict

    sys.path.insert(0, str(BENCHMARKS))
    try:
        from bench_search_digits import macro
    finally:
        sys.path.remove(str(BENCHMARKS))
    cat = catalog_from_dict({"macro": macro(8)}, "digits8", builtin())
    table = tmp_path / "digits8.json"
    fake_latency_table(cat.spaces["latency19"], cat.macros["digits8"], table)
    out = tmp_path / "out"
    command = [sys.executable, str(BENCHMARKS / "bench_search_vs_random.py"), "-o", str(out), "--seeds", "2",
               "--rounds", "1", "--epochs", "1", "--train-epochs", "1", "2", "--randoms", "1", "--samples", "8",
               "--target-quantile", "0.7",  # a target every seed's first subsets reach
               "--dataset", "synthetic", "--table", str(table), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert [s["seed"] for s in report["seeds"]] == [0, 1]
    for s in report["seeds"]:
        assert s["train"] == int(0.3 * 1797) and s["test"] == 1797 - s["train"]
        assert s["searched"] is not None and len(s["random"]) == 1  # this size finds both
        for r in s["random"]:  # the same predicted latency, within 5%
            assert abs(r["latency_ms"] / s["searched"]["latency_ms"] - 1) <= 0.05
        assert set(s["budgets"]) == {"1", "2"}
        for b in s["budgets"].values():
            assert 0 <= b["searched"] <= 1 and len(b["random"]) == 1
            assert b["difference"] == pytest.approx(b["searched"] - b["random_mean"])
    for epochs in ("1", "2"):
        st = report["statistics"][epochs]
        diffs = [s["budgets"][epochs]["difference"] for s in report["seeds"]]
        assert st["seeds"] == 2 and st["mean_difference"] == pytest.approx(sum(diffs) / 2)
        assert f"{epochs} epochs: mean difference" in proc.stdout
    again = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)  # kept: no new search
    assert again.returncode == 0 and json.loads((out / "report.json").read_text())["seeds"] == report["seeds"]
    at = command.index("--train-epochs")
    assert command[at + 1:at + 3] == ["1", "2"]
    other = subprocess.run(command[:at + 1] + ["3"] + command[at + 3:], capture_output=True, text=True, timeout=900,
                           env=env)  # a kept seed measured otherwise is not mixed in
    assert other.returncode != 0 and "seed_0.json was measured with other settings" in other.stderr


def test_digits_load_from_scikit_learn():
    """The benchmarks' dataset: scikit-learn's 8x8 digits in [0, 1], at 8x8 or upsampled."""
    pytest.importorskip("sklearn", reason="scikit-learn (hwnas's test extra) holds the digits")
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from bench_search_digits import digits
    finally:
        sys.path.remove(str(BENCHMARKS))
    x, y = digits(8)
    assert x.shape == (1797, 1, 8, 8) and y.shape == (1797,) and set(y.tolist()) == set(range(10))
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert digits(16)[0].shape == (1797, 1, 16, 16)


@pytest.mark.parametrize("script", ["bench_search_vs_random.py", "bench_search_digits.py"])
def test_without_scikit_learn_the_scripts_say_what_to_install(script, tmp_path):
    hide = ("import runpy, sys; sys.modules['sklearn'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", hide, str(BENCHMARKS / script), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=BENCHMARKS)
    assert proc.returncode == 1 and "pip install scikit-learn" in proc.stderr
    assert not (tmp_path / "out" / "report.json").exists()
