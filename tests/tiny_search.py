"""The tiny search problem of the search tests: a 5-op space on a 16x16, 4-class macro, a table
priced by a fake latency (a function of MACs: no device needed) and a learnable .npz dataset."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hwnas.profiling.predict import predict
from hwnas.profiling.table import Table
from hwnas.search import SearchConfig
from hwnas.search.run import architecture
from hwnas.spaces import Space, load_file
from hwnas.spaces.ops import op_from_dict

from conftest import REPO

@pytest.fixture(autouse=True)
def one_thread():
    """Small convolutions run fastest on one thread, and far faster on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


OPS = [{"name": "dw_k3_t1", "kind": "dw", "kernel": 3, "expand": 1},
       {"name": "dw_k5_t1", "kind": "dw", "kernel": 5, "expand": 1},
       {"name": "dw_k3_t2", "kind": "dw", "kernel": 3, "expand": 2},
       {"name": "dw_k5_t2", "kind": "dw", "kernel": 5, "expand": 2},
       {"name": "ssc_k3_t1", "kind": "ssc", "kernel": 3, "expand": 1}]


def fake_latency_table(space: Any, macro: Any, path: Path) -> Table:
    """A table of `space` on `macro` whose latency is a function of MACs (no device needed)."""
    from hwnas.profiling.backends import get_backend
    from hwnas.profiling.build import build_table

    build_table(space, macro, 1.0, get_backend("none"), 16, path, progress=False)
    table = Table.load(path)
    for e in table.entries.values():
        ms = e["macs"] / 1e6 * 0.05 + 0.01
        e["latency"] = {"count": 1, "min": ms, "median": ms, "mean": ms, "std": 0.0, "cov": 0.0}
    table.meta["backend"] = {"name": "fake"}
    table.meta["statistic"] = "median"
    table.save(path)
    return Table.load(path)


def make_tiny(folder: Path) -> dict[str, Any]:
    macro = dataclasses.replace(load_file(REPO / "tests" / "data" / "tiny.json").macros["tiny"], input=16,
                                classes=4, name="tiny16")
    space = Space("tiny5", tuple(op_from_dict(o, "op") for o in OPS))
    path = folder / "table.json"
    table = fake_latency_table(space, macro, path)
    g = torch.Generator().manual_seed(0)
    n = 192
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.rand(n, 3, 16, 16, generator=g) * 0.5
    for c in range(4):  # each class brightens its own band of one channel
        x[y == c, c % 3, (c // 2) * 8:(c // 2) * 8 + 8, :] += 0.5
    npz = folder / "data.npz"
    np.savez(npz, images=(x.clamp(0, 1) * 255).to(torch.uint8).numpy(), labels=y.numpy())
    full = predict(table, architecture(table, [list(range(5))] * len(macro.slots(1.0)), "full"))["latency_ms"]
    return {"folder": folder, "table": table, "path": path, "npz": npz, "target": round(0.4 * full, 4)}


def tiny_config(tiny: dict[str, Any], **kw: Any) -> SearchConfig:
    """A 2-round search with the budget constraint (cost <= target)."""
    base = dict(metric="latency", target=tiny["target"], rounds=2, k=2, epochs=2, batch=32, samples=12, bn_images=64,
                eval_batch=64, checkpoint_every=3, seed=1)
    base.update(kw)
    return SearchConfig(**base)


def interval_config(tiny: dict[str, Any], **kw: Any) -> SearchConfig:
    """tiny_config with NSE's interval constraint, [target, 1.5 target], its target low enough in
    the subsets' reachable costs that draws fall both inside the interval and in its edge band
    [0.5 target, target)."""
    base = dict(constraint="interval", target=round(0.6 * tiny["target"], 4), margin=0.5, edge_samples=4,
                edge_margin=0.5)
    base.update(kw)
    return tiny_config(tiny, **base)
