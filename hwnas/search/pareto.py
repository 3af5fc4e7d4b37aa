"""The Pareto front of (cost, accuracy): lower cost and higher accuracy are better."""

from __future__ import annotations

from collections.abc import Sequence


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points that no other point dominates (cost <= and accuracy >=, one of them
    strictly), in order of increasing cost. Of equal points, the first is kept."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front: list[int] = []
    best = float("-inf")
    for i in order:
        cost, acc = points[i]
        if acc > best:  # strictly more accurate than every cheaper-or-equal point seen
            front.append(i)
            best = acc
    return front
