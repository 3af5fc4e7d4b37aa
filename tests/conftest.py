from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The fused layer's tests test its kernels, not its fallback: with the first-use check on, a broken
# kernel would make the layer compute with the eager cell and every comparison with the eager cell
# pass. So the tests (and the processes they start) run the kernels unchecked; tests/test_fallback.py
# tests the check and the fallback (HWNAS_FUSED=auto) itself.
os.environ.setdefault("HWNAS_FUSED", "force")
SHARED_REFERENCE = REPO.parent / "shared" / "reference" / "nse_reference.json"


@pytest.fixture
def nse_doc() -> dict:
    """The built-in document, as a fresh dict that a test may mutate."""
    return json.loads((REPO / "hwnas" / "data" / "nse.json").read_text())


@pytest.fixture(scope="session")
def latency19_macs(tmp_path_factory):
    """A MACs/params table (backend none) of latency19 on the latency macro; tests must not mutate it."""
    from hwnas.profiling.backends import get_backend
    from hwnas.profiling.build import build_table
    from hwnas.profiling.table import Table
    from hwnas.spaces import builtin

    path = tmp_path_factory.mktemp("tables") / "latency19_macs.json"
    build_table(builtin().spaces["latency19"], builtin().macros["latency"], 1.0, get_backend("none"), 16, path,
                progress=False)
    return Table.load(path)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; torch.cuda.is_available() is False on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
