"""A float64 search for tests/test_data_parallel.py, run as one process or under torchrun: every
rank saves its supernet, thetas and pruned ops at the end of each round's training.

    python tests/data_parallel_search.py TABLE DATA.npz CONFIG.json RUN DUMP
    torchrun --nproc-per-node 2 tests/data_parallel_search.py TABLE DATA.npz CONFIG.json RUN DUMP
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from hwnas.profiling.table import Table
from hwnas.search import Search, SearchConfig, load_npz


def main(table: str, data: str, config: str, run: str, dump: str) -> None:
    torch.set_default_dtype(torch.float64)  # the supernet and theta in float64: comparisons to 1e-9
    torch.set_num_threads(1)
    cfg = SearchConfig.from_dict(json.loads(Path(config).read_text()), config).check()
    search = Search(Table.load(table), load_npz(data), cfg, run, progress=False)
    retrieve = Search._retrieve

    def dumping_retrieve(self, trainer, previous, round_index):  # type: ignore[no-untyped-def]
        folder = Path(dump) / f"rank{self.group.rank}"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"layer_ops": trainer.layer_ops, "pruned": trainer.pruned,
                    "thetas": [t.detach().clone() for t in trainer.fitness.thetas],
                    "net": {k: v.clone() for k, v in trainer.net.state_dict().items()}},
                   folder / f"round_{round_index:02d}.pt")
        return retrieve(self, trainer, previous, round_index)

    Search._retrieve = dumping_retrieve  # type: ignore[method-assign]
    search.run()


if __name__ == "__main__":
    main(*sys.argv[1:6])
