"""The TensorRT code, which cannot run here, type-checked against the real TensorRT API stubs."""

from __future__ import annotations

import pytest

from conftest import REPO
from trt_stubs import installed_stub_dir, mypy_available, patched_stubs, run_mypy

# Modules that call TensorRT or time the GPU: they must be among the files the check covers.
TENSORRT_CODE = ["hwnas.profiling.backends.tensorrt", "hwnas.export.engine", "hwnas.bench.timing",
                 "hwnas.cli.bench_cmd", "hwnas.cli.export_cmd", "hwnas.profiling.gpu_timing"]
PACKAGE = ["hwnas"]  # the whole package, type-checked with the same stubs

pytestmark = pytest.mark.skipif(
    installed_stub_dir() is None or not mypy_available(),
    reason="needs mypy and tensorrt-stubs (pip install mypy; pip install --no-deps tensorrt-stubs)",
)


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    return patched_stubs(tmp_path_factory.mktemp("trt-stubs"))


def checked_modules(report_dir):
    """Module names from mypy's line-count report: the modules it type-checked."""
    lines = (report_dir / "linecount.txt").read_text().splitlines()[1:]  # the first line is the total
    return {line.split()[-1] for line in lines if line.strip()}


def test_package_type_checks_against_tensorrt_stubs(stubs, tmp_path):
    report = tmp_path / "report"
    proc = run_mypy(stubs, [str(REPO / f) for f in PACKAGE], REPO / "pyproject.toml",
                    ["--linecount-report", str(report)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout
    missing = set(TENSORRT_CODE) - checked_modules(report)
    assert not missing, f"not type-checked: {sorted(missing)}"


REMOVED_APIS = '''
import tensorrt as trt

def build(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig) -> None:
    config.max_workspace_size = 1 << 30
    builder.build_engine(network, config)

def run(engine: trt.ICudaEngine, context: trt.IExecutionContext) -> None:
    context.execute_async_v2(bindings=[0, 0], stream_handle=0)
    print(engine.num_bindings, engine.get_binding_shape(0))
'''


def test_the_check_catches_removed_apis(stubs, tmp_path):
    """Negative controls: TensorRT 8-era calls removed in 10 must fail the same check, also
    inside a copy of the backend (so its `trt` resolves to the stubs, not to Any)."""
    src = tmp_path / "old_trt.py"
    src.write_text(REMOVED_APIS)
    backend = (REPO / "hwnas/profiling/backends/tensorrt.py").read_text()
    assert "execute_async_v3(" in backend and "set_tensor_address(" in backend
    mutant = tmp_path / "mutant_backend.py"
    mutant.write_text(backend.replace("execute_async_v3(", "execute_async_v2(")
                      .replace("set_tensor_address(", "set_binding_address("))
    proc = run_mypy(stubs, [str(src), str(mutant)], REPO / "pyproject.toml")
    assert proc.returncode != 0
    for api in ("max_workspace_size", "build_engine", "execute_async_v2", "num_bindings", "get_binding_shape"):
        assert api in proc.stdout, proc.stdout
    mutant_errors = [line for line in proc.stdout.splitlines() if line.startswith(str(mutant))]
    for api in ("execute_async_v2", "set_binding_address"):
        assert any(api in line for line in mutant_errors), proc.stdout
