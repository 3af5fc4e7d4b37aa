"""The GPU acceptance script's own logic, on the CPU: staging by what the machine has, budget
sizing, the report rewritten after every stage (and kept when the run is killed), stages
stopped at their deadline, and a run without a GPU."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_acceptance.py"


@pytest.fixture(scope="module")
def acc():
    spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_without_a_gpu_the_stages_are_skipped_with_reasons(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the acceptance would run for real")
    out = tmp_path / "acc"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--budget", "2", "--out", str(out)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    report = json.loads((out / "report.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    # the first stage: hwnas env --check, the CPU paths checked, the GPU paths skipped with reasons
    assert report["stages"][0]["name"] == "self_check" and stages["self_check"]["status"] == "passed"
    check = stages["self_check"]["result"]
    assert check["passed"] == 4 and check["failed"] == 0 and check["skipped"] >= 7
    assert check["paths"]["kernels cpu float32 (CPU twin)"] == "passed"
    selfcheck = json.loads((out / "selfcheck.json").read_text())
    assert all("no CUDA GPU" in p["detail"] for p in selfcheck["paths"] if p["name"].startswith("kernels cuda"))
    assert stages["environment"]["status"] == "passed"
    assert stages["environment"]["result"]["cuda_available"] is False
    assert stages["environment"]["result"]["hwnas_env"]["ok"] is False  # hwnas env's view, kept whole
    for name in ("kernel_tests", "search_ddp", "fused_bench", "kernel_bandwidth", "torch_table", "torch_validate",
                 "torch_transfer", "trt_engines"):
        assert stages[name]["status"] == "skipped" and "no CUDA GPU" in stages[name]["reason"]
    assert "skipped" in (out / "report.md").read_text()


def test_budget_must_be_positive(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--budget", "0", "--out", str(tmp_path)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and "--budget" in proc.stderr


def test_the_budget_sizes_the_work(acc):
    small, large = acc.fused_params(40), acc.fused_params(400)
    assert small["positions"] <= large["positions"] <= 4 and large["compile"] and not small["compile"]
    assert 3 <= acc.table_params(30)["rounds"] <= acc.table_params(300)["rounds"] <= 9
    assert acc.validate_params(20)["samples"] == 10 and acc.validate_params(1000)["samples"] == 50
    # the torch table at its share of an 8-minute run: the build's cost model fits its share
    rounds = acc.table_params(130)["rounds"]
    assert 15 + acc.TABLE_ENTRIES * (0.25 + 0.01 * rounds) <= 130


def simulate(acc, budget_min, needs):
    """Shares each stage would get if every stage used all of its time (the worst case)."""
    budget_s = budget_min * 60
    runnable = [s for s in acc.STAGES if needs[s.needs] is None and s.min_s <= budget_s]
    left, got = budget_s, {}
    for stage in runnable:
        seconds = acc.share(stage, left, runnable[runnable.index(stage):])
        if seconds >= stage.min_s:
            got[stage.name] = seconds
            left -= seconds
    return got, left


def test_an_eight_minute_run_fits_every_cuda_stage(acc):
    from hwnas.profiling.build import plan_groups
    from hwnas.spaces import builtin

    space = builtin()
    groups = plan_groups(space.spaces["latency19"], space.macros["latency"], 1.0, 16)
    assert acc.TABLE_ENTRIES == sum(len(g) for g in groups)  # the one figure the sizing assumes
    got, left = simulate(acc, 8, {"": None, "cuda": None, "cuda+pytest": None, "tensorrt": "absent"})
    assert set(got) == {"self_check", "environment", "kernel_tests", "search_ddp", "fused_bench", "kernel_bandwidth",
                        "torch_table", "torch_validate", "torch_transfer"}
    assert got["self_check"] >= 70  # the check's paths on one GPU, their estimates summed, fit
    from hwnas.selfcheck.check import COMPILE_S, ESTIMATE_S
    paths = 2 * ESTIMATE_S["kernels"] + COMPILE_S["cpu"] + 2 * ESTIMATE_S["fused cell"]  # the CPU's
    paths += 3 * ESTIMATE_S["kernels"] + COMPILE_S["cuda"] + ESTIMATE_S["fused cell"] + ESTIMATE_S["timing"]
    assert paths <= acc.self_check_params(got["self_check"])["budget_s"]
    assert sum(got.values()) <= 8 * 60 + 1e-6 and left >= -1e-6
    assert got["fused_bench"] >= 60  # enough for torch.compile


def test_the_transfer_stage_fits_its_share_and_its_command_parses(acc, tmp_path):
    """The torch_transfer stage (not run without a GPU): its sizing keeps the measured tenth, the
    calibration and the validation inside its share, and its command is one the real parser takes."""
    from hwnas.cli.main import build_parser

    for seconds in (40, 60, 120, 600):
        p = acc.transfer_params(seconds)
        measured = acc.TABLE_ENTRIES // 10
        assert p["budget"] == 0.1 and 3 <= p["rounds"] <= 9 and 4 <= p["samples"] <= 30
        per_entry = acc.TRANSFER_ENTRY_S + acc.TRANSFER_ROUND_S * p["rounds"]
        assert 15 + measured * per_entry + 2.0 * p["samples"] <= max(seconds, 40 + 1e-9)
    args = build_parser().parse_args(acc.transfer_command(acc.transfer_params(60), tmp_path / "t.json"))
    assert args.func.__name__ == "cmd_transfer" and args.backend == "torch" and args.budget == 0.1
    assert acc.SHIPPED_TABLE.exists() and args.source == str(acc.SHIPPED_TABLE)


def test_the_self_check_stage_fails_naming_the_failed_path(acc, tmp_path, monkeypatch):
    """A path that fails `hwnas env --check` fails the stage, which keeps the counts and says which."""
    (tmp_path / "stages").mkdir()
    report = {"ok": False, "passed": 3, "failed": 1, "skipped": 2, "paths": [
        {"name": "kernels cuda:0 NVIDIA H100 float16", "status": "failed", "detail": "2 of 163 quantities off"},
        {"name": "fused cell cpu float32", "status": "passed", "detail": ""}]}
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, json.dumps(report), "hwnas: error: ...")

    monkeypatch.setattr(acc.subprocess, "run", fake_run)
    with pytest.raises(SystemExit, match="kernels cuda:0 NVIDIA H100 float16: 2 of 163 quantities off"):
        acc.stage_self_check({"budget_s": 50}, tmp_path)
    (cmd,) = calls
    assert cmd[-7:] == ["env", "--check", "--json", "--budget", "50", "-o", str(tmp_path / "selfcheck.json")]
    kept = json.loads((tmp_path / "stages" / "self_check.json").read_text())
    assert kept["failed"] == 1 and kept["paths"]["fused cell cpu float32"] == "passed"
    assert acc.self_check_params(90)["budget_s"] == 80


DRIVER = """
import json, sys, time
from pathlib import Path
import importlib.util
spec = importlib.util.spec_from_file_location("acc", sys.argv[1])
acc = importlib.util.module_from_spec(spec)
sys.modules["acc"] = acc
spec.loader.exec_module(acc)
CODE = {
    "quick": "import json, sys; open(sys.argv[1] + '/stages/quick.json', 'w').write(json.dumps({'value': 1}))",
    "slow": "import time; time.sleep(120)",
}
acc.stage_command = lambda stage, params, out: [sys.executable, "-c", CODE[stage.name], str(out)]
stages = [acc.Stage(name, "", 1.0, 0.1, name) for name in sys.argv[3].split(",")]
sys.exit(acc.run_stages(stages, Path(sys.argv[2]), float(sys.argv[4]), {"": None, "cuda": None}))
"""


def start_driver(tmp_path, order, budget_min):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    return subprocess.Popen([sys.executable, str(driver), str(SCRIPT), str(tmp_path / "out"), order, str(budget_min)],
                            env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_killed_run_keeps_its_report(tmp_path):
    proc = start_driver(tmp_path, "quick,slow", 10)
    report_file = tmp_path / "out" / "report.json"
    deadline = time.monotonic() + 120
    report = None
    while time.monotonic() < deadline:
        if report_file.exists():
            report = json.loads(report_file.read_text())
            if report["stages"][-1]["name"] == "slow":
                break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its running stage, mid-way
    proc.wait()
    report = json.loads(report_file.read_text())
    quick, slow = report["stages"]
    assert quick["status"] == "passed" and quick["result"] == {"value": 1}
    assert slow["status"] == "running" and report["state"] == "running"
    assert "quick" in (tmp_path / "out" / "report.md").read_text()


def test_a_stage_is_stopped_at_its_share_and_the_next_still_runs(tmp_path):
    start = time.monotonic()
    proc = start_driver(tmp_path, "slow,quick", 0.1)  # 6 s: slow gets 3 s
    output, _ = proc.communicate(timeout=120)
    assert time.monotonic() - start < 60
    assert proc.returncode == 1, output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    slow, quick = report["stages"]
    assert slow["status"] == "timed_out" and 2 <= slow["seconds"] <= 20
    assert quick["status"] == "passed"
    assert report["state"] == "failed: slow"


def test_fused_stage_runs_its_benchmark(acc, tmp_path):
    """The fused-bench stage's code path, on the CPU at its smallest size (one position, no compile)."""
    (tmp_path / "stages").mkdir()
    result = acc.stage_fused_bench({"positions": 1, "compile": False, "rounds": 1, "seconds": 1, "device": "cpu",
                                    "batch": 1},
                                   tmp_path)
    assert len(result["rows"]) == 1 and result["speedup_vs_eager"] > 0 and result["speedup_vs_compile"] is None
    assert json.loads((tmp_path / "stages" / "fused_bench.json").read_text())["rows"] == result["rows"]


STAND_IN = """
import json, sys
import importlib.util
spec = importlib.util.spec_from_file_location("acc", sys.argv[1])
acc = importlib.util.module_from_spec(spec)
sys.modules["acc"] = acc
spec.loader.exec_module(acc)
sys.modules["pytest"] = acc.pytest_stand_in()  # as on a machine without pytest
from pathlib import Path
print(json.dumps(acc.run_gpu_tests(Path(sys.argv[2]), call=sys.argv[3] == "call")))
"""

SAMPLE_TESTS = '''
import pytest

@pytest.mark.gpu
@pytest.mark.parametrize("a", [1, 2, 3])
@pytest.mark.parametrize("b,c", [(1, 1), (2, 3)], ids=["same", "differ"])
def test_sum(a, b, c):
    assert a + b != 3 + c  # fails for (a, b, c) = (3, 1, 1) and only there

def test_not_gpu():
    raise AssertionError("only gpu tests are called")
'''


def run_stand_in(tmp_path, test_file, how):
    driver = tmp_path / "stand_in.py"
    driver.write_text(STAND_IN)
    proc = subprocess.run([sys.executable, str(driver), str(SCRIPT), str(test_file), how], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_without_pytest_the_gpu_tests_are_called_over_their_grids(tmp_path):
    sample = tmp_path / "test_sample.py"
    sample.write_text(SAMPLE_TESTS)
    result = run_stand_in(tmp_path, sample, "call")
    assert result["cases"] == 6 and result["passed"] == 5 and result["failed"] == 1
    failure = result["failures"][0]
    assert "'a': 3" in failure and "'b': 1" in failure and "'c': 1" in failure


def test_the_stand_in_finds_the_kernel_gpu_tests_pytest_finds(tmp_path):
    result = run_stand_in(tmp_path, REPO / "tests" / "test_kernels.py", "list")
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu",
                           str(REPO / "tests" / "test_kernels.py")], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    collected = [line for line in proc.stdout.splitlines() if "::" in line]
    assert result["cases"] == len(collected) > 0
