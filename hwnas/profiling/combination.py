"""The combination model: how a table's entries add up to a cell and to a whole network.

The one home of the rule: `COMBINATION` states it (every table stores that text), and
`merge_cost` computes it for `predict` and for the supernet's cost model.
"""

from __future__ import annotations

COMBINATION = ("network = calibration factor * (stem + head + sum of cells); cell = sum of its branches' entries "
               "+ (terms - 1) * merge_add + merge_scale if terms > 1, where terms = branches + 1 for a normal cell "
               "(the identity), branches otherwise. The factor (meta.calibration) is the median ratio measured / "
               "summed over random architectures timed whole: isolated graphs pay boundary costs (layout "
               "reorders, cold inputs, unfused adds) that a whole network does not")


def cell_terms(branches: int, identity: bool) -> int:
    """The number of terms a cell averages: its selected branches, plus the identity of a normal cell."""
    return branches + int(identity)


def merge_cost(branches: int, identity: bool, merge_add: float, merge_scale: float) -> float:
    """The merge of a cell with `branches` selected branches: (terms - 1) adds and one division,
    nothing when the cell has a single term (one branch alone, or the identity alone)."""
    terms = cell_terms(branches, identity)
    return (terms - 1) * merge_add + merge_scale if terms > 1 else 0.0
