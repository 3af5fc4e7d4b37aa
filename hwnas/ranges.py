"""The allowed range of every number a user gives hwnas, on the command line or in a file.

A `Range` checks a number for the command line (as an argparse type whose error states the
range) and for spec, table or config files (`Range.check(value, where)`: a one-line
`SpecError` naming the field). `hwnas.cli.options` declares the options that use them.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

from hwnas.errors import SpecError


@dataclass(frozen=True)
class Range:
    """An int or float in [lo, hi] (an end that is None is open; `lo_open` excludes lo, `hi_open` hi)."""

    kind: type
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    unit: str = ""

    def describe(self) -> str:
        """The allowed values, as --help and the errors say them: 'an integer in 1..65536'."""
        noun = "an integer" if self.kind is int else "a finite number"
        if self.lo is not None and self.hi is not None and not (self.lo_open or self.hi_open):
            text = f"{noun} in {_fmt(self.lo)}..{_fmt(self.hi)}"
        else:
            parts = []
            if self.lo is not None:
                parts.append(f"{'>' if self.lo_open else '>='} {_fmt(self.lo)}")
            if self.hi is not None:
                parts.append(f"{'<' if self.hi_open else '<='} {_fmt(self.hi)}")
            text = f"{noun} {' and '.join(parts)}" if parts else noun
        return text + (f" ({self.unit})" if self.unit else "")

    def problem(self, value: Any) -> str | None:
        """Why `value` is not allowed, or None."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be {self.describe()}"
        if self.kind is int and (isinstance(value, float) and not value.is_integer()):
            return f"must be {self.describe()}"
        if not math.isfinite(value):
            return f"must be {self.describe()}, not {value}"
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return f"must be {self.describe()}"
        if self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi):
            return f"must be {self.describe()}"
        return None

    def check(self, value: Any, where: str) -> Any:
        """For files: the value, or a SpecError naming the field and the allowed range."""
        why = self.problem(value)
        if why:
            raise SpecError(f"{where} {why} (got {value!r})")
        return int(value) if self.kind is int else float(value)

    def __call__(self, text: str) -> Any:
        """As an argparse type."""
        try:
            value: Any = int(text, 10) if self.kind is int else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {self.describe()}") from None
        why = self.problem(value)
        if why:
            raise argparse.ArgumentTypeError(f"{text!r}: {why}")
        return value


def _fmt(x: float) -> str:
    if float(x).is_integer() and abs(x) < 1e15:
        return f"{int(x):,}".replace(",", "_") if abs(x) >= 100_000 else str(int(x))
    return f"{x:g}"


# The ranges. Generous where a real use could want more, tight where a value is nonsense.
BATCH = Range(int, 1, 65536)
SCALE = Range(float, 0, 16, lo_open=True, unit="channel multiplier")
THREADS = Range(int, 1, 4096)
SAMPLES = Range(int, 1, 1_000_000)
SEED = Range(int, 0, 2**32 - 1)
STEPS = Range(int, 1, 10_000_000)
ROUNDS = Range(int, 1, 10_000)
ITERATIONS = Range(int, 1, 100_000_000)
COUNT = Range(int, 1, 1_000_000)  # small positive counts (pairs, candidates)
COUNT0 = Range(int, 0, 1_000_000)  # the same, where 0 means "all" or "none"
TALLY = Range(int, 0, None)  # counted things in files (MACs, parameters)
TARGET = Range(float, 0, 1e9, lo_open=True)  # resource targets (ms per batch, millions of MACs)
POSITIVE = Range(float, 0, None, lo_open=True)
NON_NEGATIVE = Range(float, 0, None)
ALPHA = Range(float, 0, 1e6)  # a penalty weight: 0 turns the penalty off
BETA = Range(float, 0, 16, lo_open=True)  # a penalty exponent
LEARNING_RATE = Range(float, 0, 100, lo_open=True)
WORKSPACE_GB = Range(float, 0, 4096, lo_open=True, unit="GiB")
SECONDS = Range(float, 0, 7 * 24 * 3600, unit="seconds")
MILLISECONDS = Range(float, 0, 3600 * 1000, unit="ms")
PERCENT = Range(float, 0, 100, unit="percent")
FRACTION = Range(float, 0, 1)
SHARE = Range(float, 0, 1, lo_open=True)  # a part of a whole that cannot be nothing
ADAM_BETA = Range(float, 0, 0.9999)  # an Adam moment's decay (1 would never forget)
OPEN_FRACTION = Range(float, 0, 1, lo_open=True, hi_open=True)  # a share of the data carved out
ANY_NUMBER = Range(float)  # any finite number (a threshold on theta)
