"""The top-level API: light to import, every name documented, and a user's own profiling backend
registered by name works through table building and validation."""

from __future__ import annotations

import subprocess
import sys
import pytest

import hwnas
from hwnas.profiling import backends

from conftest import REPO
from flop_backend import FlopBackend, FlopRunner

TINY = str(REPO / "tests" / "data" / "tiny.json")


def test_import_is_light():
    heavy = ("torch", "onnx", "onnxruntime", "tensorrt")
    code = f"import sys, hwnas; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == ""


def test_every_public_name_resolves_and_is_documented():
    reference = (REPO / "docs" / "api.md").read_text()
    for name in hwnas.__all__:
        value = getattr(hwnas, name)
        assert (value.__doc__ or "").strip(), f"hwnas.{name} has no docstring"
        assert name in hwnas.__doc__, f"hwnas.{name} is missing from the package docstring"
        assert f"`{name}" in reference, f"hwnas.{name} is missing from docs/api.md"
    assert hwnas.validate_table is __import__("hwnas.profiling.validate", fromlist=["x"]).validate
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        hwnas.nope  # noqa: B018


def test_help_shows_the_api():
    out = subprocess.run([sys.executable, "-c", "import hwnas; help(hwnas)"], capture_output=True, text=True,
                         check=True, cwd=REPO, env={"PAGER": "cat", "PATH": "/usr/bin:/bin"})
    for name in ("FusedSupernetCell", "ResourceRegularizer", "register_backend", "build_table", "predict",
                 "export_onnx", "benchmark"):
        assert name in out.stdout


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(backends, "_REGISTERED", {})


def test_a_registered_backend_builds_and_validates_a_table(tmp_path, registry):
    hwnas.register_backend(FlopBackend)
    assert "flops-model" in hwnas.backend_names()
    quick = hwnas.Protocol(warmup_ms=2.0, warmup_runs=1, min_sample_ms=1.0, rounds=3, network_rounds=3,
                           calibration_architectures=2)
    space, macro = hwnas.resolve_space(TINY), hwnas.resolve_macro(TINY)
    table = hwnas.build_table(space, macro, 1.0, hwnas.get_backend("flops-model"), 2, tmp_path / "t.json",
                              protocol=quick, progress=False)
    assert table.meta["backend"]["name"] == "flops-model" and table.meta["complete"]
    # the entries are the FLOP model's: an op entry is 1 ms + its FLOPs
    key = next(k for k in table.entries if k.startswith("dw_k3_t2@"))
    assert table.latency(key) > 1.0
    report = hwnas.validate_table(hwnas.Table.load(tmp_path / "t.json"), samples=2, progress=False)
    assert report["n"] == 2 and all(s["measured_ms"] > 0 for s in report["samples"])


def test_registration_is_checked(registry):
    with pytest.raises(TypeError, match="subclass of hwnas.Backend"):
        hwnas.register_backend(FlopRunner)  # type: ignore[arg-type]

    class Ort(FlopBackend):
        name = "ort"

    with pytest.raises(hwnas.HwnasError, match="'ort' is a built-in backend"):
        hwnas.register_backend(Ort)
    hwnas.register_backend(FlopBackend)

    class Other(FlopBackend):
        pass

    with pytest.raises(hwnas.HwnasError, match="already registered"):
        hwnas.register_backend(Other)
    assert hwnas.register_backend(Other, replace=True) is Other
    assert isinstance(hwnas.get_backend("flops-model"), Other)
    with pytest.raises(hwnas.HwnasError, match="choose one of ort, torch, tensorrt, none, flops-model"):
        hwnas.get_backend("cuda")
