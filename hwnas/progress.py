"""Progress bars for long work: tqdm on stderr with the time left, off when not wanted."""

from __future__ import annotations

import sys
from typing import Any

# Percent and time (elapsed<remaining) only: for work counted in fractions (seconds, stages).
TIME_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}"


def progress_bar(total: float, desc: str, unit: str = "it", enabled: bool = True, by_time: bool = False) -> Any:
    """A tqdm bar on stderr (disabled: the same object, drawing nothing)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                bar_format=TIME_FORMAT if by_time else None)
