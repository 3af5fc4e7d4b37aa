"""The TensorRT code, which cannot run here, type-checked against the real TensorRT API stubs."""

from __future__ import annotations

import pytest

from conftest import REPO
from trt_stubs import installed_stub_dir, mypy_available, patched_stubs, run_mypy

TENSORRT_CODE = ["hwnas/profiling/backends/tensorrt.py", "hwnas/export/engine.py"]  # must pass with the TensorRT stubs
PACKAGE = ["hwnas"]  # the whole package, type-checked with the same stubs

pytestmark = pytest.mark.skipif(
    installed_stub_dir() is None or not mypy_available(),
    reason="needs mypy and tensorrt-stubs (pip install mypy; pip install --no-deps tensorrt-stubs)",
)


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    return patched_stubs(tmp_path_factory.mktemp("trt-stubs"))


def test_package_type_checks_against_tensorrt_stubs(stubs):
    proc = run_mypy(stubs, [str(REPO / f) for f in PACKAGE], REPO / "pyproject.toml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout
    for f in TENSORRT_CODE:  # the TensorRT modules were among the checked files
        assert (REPO / f).is_file()


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
    """Negative control: TensorRT 8-era calls removed in 10 must fail the same check."""
    src = tmp_path / "old_trt.py"
    src.write_text(REMOVED_APIS)
    proc = run_mypy(stubs, [str(src)], REPO / "pyproject.toml")
    assert proc.returncode != 0
    for api in ("max_workspace_size", "build_engine", "execute_async_v2", "num_bindings", "get_binding_shape"):
        assert api in proc.stdout, proc.stdout
