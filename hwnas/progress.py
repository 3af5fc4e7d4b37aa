"""Progress bars for long work: tqdm on stderr with the time left, drawn only on a terminal (a log
or a pipe gets no carriage-return frames, and an error after a bar stays one line)."""

from __future__ import annotations

import sys
from typing import Any

# A bar appears once its work has lasted this long: quick work, and an input refused at once,
# print nothing but their result (an error stays one line).
DELAY_S = 1.0
ANYWHERE = False  # draw on any stderr, not only a terminal (tests)
# Percent and time (elapsed<remaining) only: for work counted in fractions (seconds, stages).
TIME_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}"
# Count and elapsed time only: for work whose caller estimates the time left itself (in the postfix).
COUNT_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit}|{bar}| {elapsed}{postfix}"


def progress_bar(total: float, desc: str, unit: str = "it", enabled: bool = True, by_time: bool = False,
                 initial: float = 0, leave: bool = True, own_eta: bool = False) -> Any:
    """A tqdm bar on stderr (disabled: the same object, drawing nothing). own_eta: no time left of
    tqdm's (from the rate of the count); the caller puts its own in the postfix."""
    from tqdm import tqdm

    shown = enabled and (ANYWHERE or sys.stderr.isatty())
    return tqdm(total=total, desc=desc, unit=unit, disable=not shown, file=sys.stderr, dynamic_ncols=True,
                bar_format=TIME_FORMAT if by_time else COUNT_FORMAT if own_eta else None, delay=DELAY_S,
                initial=initial, leave=leave)
