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
