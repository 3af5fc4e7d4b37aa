"""`hwnas env`: what it reports, and its exit code and one-line reasons when a piece is missing.

The GPU rows can only say "none" on a machine without a GPU; the CUDA 13 and 12 installations a
GPU user has are rehearsed end to end in test_wheel.py."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from hwnas.cli.main import main
from hwnas.kernels import nvrtc


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def pieces(out: str) -> dict[str, dict]:
    return {p["name"]: p for p in json.loads(out)["components"]}


def have_nvrtc() -> bool:
    try:
        nvrtc.version()
    except Exception:
        return False
    return True


@pytest.fixture(autouse=True)
def fresh_loader():
    nvrtc.nvrtc.cache_clear()
    yield
    nvrtc.nvrtc.cache_clear()


def test_reports_what_the_process_has(capsys):
    code, out, err = run(capsys, "env", "--json")
    found = pieces(out)
    assert found["torch"]["version"] == torch.__version__
    assert found["python"]["detail"] == sys.executable
    if not torch.cuda.is_available():  # the GPU paths cannot run: say so, exit 1
        assert code == 1 and not json.loads(out)["ok"]
        assert "hwnas: error: GPU: torch sees no CUDA GPU" in err
        assert all(line.startswith("hwnas: error: ") for line in err.splitlines())
    if have_nvrtc():
        major, minor = nvrtc.version()
        assert found["NVRTC"]["version"] == f"{major}.{minor}"
        assert found["CUDA headers"]["detail"].startswith(nvrtc.find_headers(major).path)


def test_missing_bindings_exit_1_naming_the_extra(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    code, out, err = run(capsys, "env", "--compile", "sm_90")
    assert code == 1
    assert "hwnas: error: cuda-bindings: cannot be imported" in err and "pip install 'hwnas[cuda13]'" in err
    assert "nothing compiled" in err


def test_cuda_python_12_beside_torch_for_cuda_13_is_named(capsys, monkeypatch):
    """The state pip left beside torch cu130 when the extra asked for cuda-python 12."""
    import hwnas.cli.env_cmd as env_cmd

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(env_cmd, "_dist_version", lambda name: {"cuda-bindings": "12.6.2", "cuda-python":
                                                                "12.6.2.post1"}.get(name))
    code, out, err = run(capsys, "env", "--json")
    assert code == 1
    assert "CUDA 12 beside torch built for CUDA 13" in pieces(out)["cuda-bindings"]["detail"]
    assert "hwnas[cuda13]" in err


@pytest.mark.skipif(not have_nvrtc(), reason="cuda-bindings with NVRTC is not installed (pip install 'hwnas[cuda13]')")
def test_compile_reports_every_kernel_of_each_arch(capsys, monkeypatch, tmp_path):
    from hwnas.kernels.cuda import KERNELS

    code, out, err = run(capsys, "env", "--compile", "sm_80", "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"], err  # no GPU needed to compile
    if not torch.cuda.is_available():
        assert pieces(out)["GPU"]["status"] == "not needed"
    (compiled,) = report["compiled"]
    assert (compiled["arch"], compiled["ok"], compiled["kernels"]) == ("sm_80", True, len(KERNELS))
    assert compiled["cubin_bytes"] == len(nvrtc.compile_cubin("sm_80")[0])
    code, out, _ = run(capsys, "env", "--compile", "sm_80")
    assert code == 0 and "cubin bytes" in out and f"{len(KERNELS)}/{len(KERNELS)}" in out


def test_compile_needs_architectures(capsys):
    code, _, err = run(capsys, "env", "--compile", "80,90")
    assert code == 2 and "expected architectures like sm_80,sm_90, got '80,90'" in err


# --- hwnas env --check ----------------------------------------------------------------------------

CPU_PATHS = ["kernels cpu float64 (CPU twin)", "kernels cpu float32 (CPU twin)", "fused cell cpu float64",
             "fused cell cpu float32"]
QUANTITIES = {"forward", "grad input", "grad weight", "bn-relu forward", "bn-relu grad h", "bn-relu grad weight",
              "bn-relu grad gamma", "bn-relu grad beta", "running mean", "running var"}


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """The real `hwnas env --check --json -o REPORT`, once, in a process of its own."""
    import os
    import subprocess

    from conftest import REPO

    report = tmp_path_factory.mktemp("check") / "sub" / "report.json"
    proc = subprocess.run([sys.executable, "-m", "hwnas.cli.main", "env", "--check", "--json", "-o", str(report)],
                          capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    return proc, report


def test_check_runs_the_cpu_paths_and_says_why_it_skips_the_others(checked):
    proc, report_file = checked
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the GPU paths run (the acceptance script checks them)")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert json.loads(report_file.read_text()) == report  # the report file is the whole report
    paths = {p["name"]: p for p in report["paths"]}
    assert report["ok"] and report["failed"] == 0 and report["passed"] == len(CPU_PATHS)
    for name in CPU_PATHS:
        assert paths[name]["status"] == "passed" and 0 <= paths[name]["worst"] <= 1 and paths[name]["seconds"] > 0
        assert all(c["ok"] for c in paths[name]["comparisons"])
    for name in CPU_PATHS[:2]:  # the kernels: every quantity, in every case
        found = {c["what"].split(" [")[0] for c in paths[name]["comparisons"]}
        assert found == QUANTITIES
    skipped = {n: p["detail"] for n, p in paths.items() if p["status"] == "skipped"}
    assert set(skipped) == set(paths) - set(CPU_PATHS)
    assert all(why.startswith("no CUDA GPU") for n, why in skipped.items() if n.split()[0] in ("kernels", "fused",
                                                                                                 "timing"))
    assert all("TensorRT" in why or "CUDA GPU" in why for n, why in skipped.items() if n.startswith("tensorrt"))
    assert skipped["nccl: global batch norm, 2 processes vs 1"] == "needs 2 CUDA GPUs, the machine has 0"
    assert report["machine"]["cpu"]["type"] == "cpu" and report["machine"]["software"]["torch"]
    assert {c["name"] for c in report["environment"]} >= {"torch", "python", "hwnas"}


def test_check_exits_1_naming_a_failed_path(capsys, monkeypatch):
    from hwnas.selfcheck import check, kernels
    from hwnas.kernels.segments import SegmentSpec
    from wrong_kernels import inject

    small = kernels.Case("small", 2, 7, 6, (SegmentSpec(3, 3), SegmentSpec(2, 5, 2, 2)))
    cpu = torch.device("cpu")
    monkeypatch.setattr(check, "plan", lambda folder: [
        check.Check("kernels cpu float64", 1.0, lambda: kernels.check_kernels(cpu, torch.float64, [small])),
        check.Check("kernels cuda float16", 1.0, None, "no CUDA GPU: test")])
    code, out, err = run(capsys, "env", "--check")
    assert code == 0 and "passed" in out and "no CUDA GPU: test" in out and "1 passed, 0 failed, 1 skipped" in out
    inject(monkeypatch, "forward")
    code, out, err = run(capsys, "env", "--check")
    assert code == 1 and "failed" in out
    (line,) = err.splitlines()
    assert line.startswith("hwnas: error: kernels cpu float64: ") and "quantities off; worst: " in line


def test_check_options_are_checked(capsys, tmp_path):
    code, _, err = run(capsys, "env", "-o", str(tmp_path / "r.json"))
    assert code == 1 and "go with --check" in err
    code, _, err = run(capsys, "env", "--budget", "10")
    assert code == 1 and "go with --check" in err
    code, _, err = run(capsys, "env", "--check", "--compile", "sm_80")
    assert code == 2 and "not allowed with argument" in err
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run(capsys, "env", "--check", "-o", str(blocker / "r.json"))  # refused before any check
    assert code == 1 and "is a file, not a folder" in err
    code, _, err = run(capsys, "env", "--check", "--budget", "-1")
    assert code == 2 and "--budget" in err


def test_a_zero_budget_skips_every_path(capsys):
    code, out, _ = run(capsys, "env", "--check", "--json", "--budget", "0")
    report = json.loads(out)
    assert code == 0 and report["passed"] == report["failed"] == 0
    assert all(p["status"] == "skipped" for p in report["paths"])
    assert any("the budget leaves 0 s" in p["detail"] for p in report["paths"])
