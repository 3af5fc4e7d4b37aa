"""The CPU backends' settings that keep a graph's time independent of what ran before it.

onnxruntime: idle workers of the many interleaved graphs must not spin (read back from the
InferenceSession onnxruntime made). The torch backend's allocator: tests/test_cpu_allocator.py."""

from __future__ import annotations

import pytest
import torch

from hwnas.profiling.backends import get_backend
from hwnas.profiling.backends.ort import SPINNING


@pytest.mark.parametrize("threads", [1, 2])
def test_onnxruntime_sessions_do_not_spin_and_the_table_says_so_from_two_threads(threads):
    backend = get_backend("ort", threads=threads)
    runner = backend.load(torch.nn.Conv2d(3, 4, 3), [(1, 3, 8, 8)])
    options = runner.session.get_session_options()
    assert options.get_session_config_entry(SPINNING) == "0"
    assert options.intra_op_num_threads == threads
    assert backend.describe().get("spinning") == ("off" if threads > 1 else None)
