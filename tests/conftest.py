from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_REFERENCE = REPO.parent / "shared" / "reference" / "nse_reference.json"


@pytest.fixture
def nse_doc() -> dict:
    """The built-in document, as a fresh dict that a test may mutate."""
    return json.loads((REPO / "hwnas" / "data" / "nse.json").read_text())


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; torch.cuda.is_available() is False on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
