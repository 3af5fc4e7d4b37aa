"""Search-space simplification: drop branches whose theta fell below a threshold.

Lock and rehearse: branches inherited from the previous round are kept whatever their theta,
and a reduction/expansion cell keeps at least its best branch (it must never be empty).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def simplify_layer(ops: Sequence[int], theta: torch.Tensor, needs_branch: bool, locked: Sequence[int] = (),
                   threshold: float = -2.0) -> list[int]:
    """The op indices of a layer that survive; `locked` ops are never dropped."""
    if len(ops) != len(theta):
        raise ValueError(f"{len(ops)} ops but {len(theta)} thetas")
    keep = [op for op, t in zip(ops, theta.tolist()) if t >= threshold or op in locked]
    if needs_branch and not keep:
        keep = [ops[int(torch.argmax(theta))]]  # the last branch of an R/E cell stays
    return keep


def simplify(layer_ops: Sequence[Sequence[int]], thetas: Sequence[torch.Tensor], needs_branch: Sequence[bool],
             locked: Sequence[Sequence[int]] | None = None, threshold: float = -2.0) -> list[list[int]]:
    """`simplify_layer` for every layer: the op indices that survive in each."""
    locked = locked or [[] for _ in layer_ops]
    return [simplify_layer(o, t, n, lk, threshold) for o, t, n, lk in zip(layer_ops, thetas, needs_branch, locked)]
