"""hwnas as a user installs it: a wheel (built from the sdist) in a clean virtual environment, not
editable, run from outside the checkout. The kernel sources must travel in the wheel, and on a
machine like a GPU user's (cuda-bindings and NVRTC from CUDA's wheels, no CUDA toolkit on any
search path) `hwnas env --compile` must compile every kernel through hwnas's own NVRTC loader,
for CUDA 13 and for CUDA 12."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from isolated_venv import REPO, TORCH, build_wheel, cached_venv, clean_env, extra, install_hwnas, project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def wheel(tmp_path_factory):
    return build_wheel(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="session")
def installed(wheel):
    """The python of a clean environment with the wheel, torch's CPU build and the test tools."""
    python = cached_venv("wheel", [TORCH, *project()["dependencies"], "pytest>=8", "hypothesis>=6.100"])
    install_hwnas(python, wheel)
    return python


def test_wheel_carries_the_kernel_sources(wheel):
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    for source in sorted((REPO / "kernels").iterdir()):
        assert f"hwnas/kernels/csrc/{source.name}" in names, f"{source.name} is not in {wheel.name}"


def test_wheel_carries_the_tables_not_their_reports(wheel):
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    tables = sorted(p.name for p in (REPO / "latency_tables").glob("*.json") if ".validation" not in p.name)
    assert tables and all(f"hwnas/data/tables/{name}" in names for name in tables), names
    assert not [n for n in names if ".validation" in n]


def test_readme_python_runs_against_the_wheel_from_a_users_folder(installed, tmp_path):
    """The README's Python example as a user runs it: from their own empty folder, with hwnas
    installed from its wheel (a shipped table named without a path)."""
    from test_readme import PYTHON_BLOCKS

    assert PYTHON_BLOCKS
    for code, line in PYTHON_BLOCKS:
        proc = subprocess.run([str(installed), "-c", code], cwd=tmp_path, capture_output=True, text=True,
                              env=clean_env(HWNAS_CACHE=str(tmp_path / "cache")), timeout=600)
        assert proc.returncode == 0, f"README.md:{line}: {proc.stderr[-3000:]}"
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


def test_installed_wheel_runs_the_fused_layer_outside_the_checkout(installed, tmp_path):
    """Today's failure: FileNotFoundError .../kernels/mixed_dw.h from the fused layer's first call."""
    probe = """
import copy, json, torch, hwnas
from hwnas.kernels.sources import source_dir
from hwnas.spaces import builtin
from hwnas.spaces.macro import Position
from hwnas.supernet import SupernetCell
from hwnas.supernet.fused import FusedSupernetCell
torch.manual_seed(0)
ref = SupernetCell(builtin().spaces["latency19"], [0, 4, 8], Position("N", 8, 8, 9, 1)).double()
fused = FusedSupernetCell(copy.deepcopy(ref))
x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
config = torch.ones(3, dtype=torch.bool)
err = (fused(x, config) - ref(x, config)).abs().max().item()
print(json.dumps({"package": hwnas.__file__, "sources": str(source_dir()), "err": err}))
"""
    proc = subprocess.run([str(installed), "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                          env=clean_env(HWNAS_CACHE=str(tmp_path / "cache")), timeout=600)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.splitlines()[-1])
    site = str(installed.parents[1] / "lib")
    assert seen["package"].startswith(site) and seen["sources"].startswith(site), seen
    assert seen["err"] < 1e-10


def test_installed_wheel_passes_the_kernel_and_fused_layer_tests(installed, tmp_path):
    tests = tmp_path / "tests"
    tests.mkdir()
    helpers = [p.name for p in (REPO / "tests").glob("*.py") if not p.name.startswith("test_")]
    for name in (*helpers, "test_kernels.py", "test_fused.py"):
        shutil.copy(REPO / "tests" / name, tests / name)
    proc = subprocess.run([str(installed), "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests"],
                          cwd=tmp_path, capture_output=True, text=True,
                          env=clean_env(HWNAS_CACHE=str(tmp_path / "cache")), timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout.splitlines()[-1]


@pytest.mark.parametrize("major", [13, 12])
def test_cuda_wheels_compile_every_kernel_through_the_users_nvrtc_path(wheel, tmp_path, major):
    """The extra cuda<major> beside torch, as pip resolves it; then the command a user runs first."""
    from hwnas.kernels.cuda import ARCHS, KERNELS

    python = cached_venv(f"cuda{major}", [TORCH, *project()["dependencies"], *extra(f"cuda{major}")])
    install_hwnas(python, wheel, f"cuda{major}")
    proc = subprocess.run([str(python.parent / "hwnas"), "env", "--compile", ",".join(ARCHS), "--json"],
                          cwd=tmp_path, capture_output=True, text=True,
                          env=clean_env(HWNAS_CACHE=str(tmp_path / "cache")), timeout=900)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["ok"], proc.stdout + proc.stderr
    pieces = {p["name"]: p for p in report["components"]}
    venv = str(python.parents[1])
    assert pieces["cuda-bindings"]["version"].split(".")[0] == str(major)
    assert pieces["NVRTC"]["version"].split(".")[0] == str(major)
    assert pieces["NVRTC"]["detail"].startswith(venv), pieces["NVRTC"]  # the wheel's libnvrtc, not a toolkit's
    assert pieces["CUDA headers"]["detail"].startswith(venv), pieces["CUDA headers"]
    assert pieces["CUDA headers"]["version"].split(".")[0] == str(major)
    assert [(c["arch"], c["ok"], c["kernels"]) for c in report["compiled"]] == [(a, True, len(KERNELS)) for a in ARCHS]
    assert all(c["cubin_bytes"] > 10_000 for c in report["compiled"])
