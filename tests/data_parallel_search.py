"""A search for tests/test_data_parallel.py, run as one process or under torchrun: every rank
saves its supernet, thetas and pruned ops at the end of each round's training.

    python tests/data_parallel_search.py TABLE DATA.npz CONFIG.json RUN DUMP [--device D] [--float32] [--gloo]
                                         [--stop-after STEPS] [--resume]
    torchrun --nproc-per-node 2 tests/data_parallel_search.py TABLE DATA.npz CONFIG.json RUN DUMP ...

float64 by default (comparisons to 1e-9). --gloo initialises the process group with gloo before
the search does (the search then uses it as it is): two processes can share one GPU that way,
where NCCL needs a GPU per process.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hwnas.profiling.table import Table
from hwnas.search import Search, SearchConfig, load_npz


def main() -> None:
    p = argparse.ArgumentParser()
    for name in ("table", "data", "config", "run", "dump"):
        p.add_argument(name)
    p.add_argument("--device")
    p.add_argument("--float32", action="store_true")
    p.add_argument("--gloo", action="store_true")
    p.add_argument("--stop-after", type=int, help="stop (KeyboardInterrupt on every rank) after this many steps")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()
    torch.set_default_dtype(torch.float32 if args.float32 else torch.float64)
    torch.set_num_threads(1)
    if args.gloo:
        torch.distributed.init_process_group("gloo")
    cfg = SearchConfig.from_dict(json.loads(Path(args.config).read_text()), args.config).check()
    search = Search(Table.load(args.table), load_npz(args.data), cfg, args.run, device=args.device, progress=False)
    retrieve = Search._retrieve

    def dumping_retrieve(self, trainer, previous, round_index):  # type: ignore[no-untyped-def]
        folder = Path(args.dump) / f"rank{self.group.rank}"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"layer_ops": trainer.layer_ops, "pruned": trainer.pruned,
                    "thetas": [t.detach().cpu().clone() for t in trainer.fitness.thetas],
                    "net": {k: v.cpu().clone() for k, v in trainer.net.state_dict().items()}},
                   folder / f"round_{round_index:02d}.pt")
        return retrieve(self, trainer, previous, round_index)

    Search._retrieve = dumping_retrieve  # type: ignore[method-assign]
    search.stop_after = args.stop_after
    search.run(resume=args.resume)
    if args.gloo:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
