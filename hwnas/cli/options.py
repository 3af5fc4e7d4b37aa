"""The one home of every shared option: its type, its allowed range, its help.

The ranges themselves live in `hwnas.ranges` (files are checked against the same ones);
`add_*` helpers declare the options several commands share, so that `--batch` or `--seed`
means the same everywhere and `--help` shows the range.
"""

from __future__ import annotations

from typing import Any

from hwnas.ranges import (ALPHA, BATCH, BETA, COUNT, COUNT0, FRACTION, ITERATIONS, LEARNING_RATE,  # noqa: F401
                          MILLISECONDS, NON_NEGATIVE, PERCENT, POSITIVE, ROUNDS, SAMPLES, SCALE, SECONDS, SEED,
                          SHARE, STEPS, TARGET, THREADS, WORKSPACE_GB, Range)


def ranged_help(help_text: str, rng: Range) -> str:
    """Help text ending with the allowed range (argparse's %-escaping kept)."""
    return f"{help_text} [{rng.describe().replace('%', '%%')}]" if help_text else f"[{rng.describe()}]"


def add_number(parser: Any, *flags: str, rng: Range, help: str = "", **kwargs: Any) -> Any:
    """A numeric option with its range checked at parse time and shown in --help."""
    kwargs.setdefault("metavar", "N" if rng.kind is int else "X")
    return parser.add_argument(*flags, type=rng, help=ranged_help(help, rng), **kwargs)


# Shared options: one declaration each.

def add_json(parser: Any, help: str = "machine-readable output (JSON on stdout)") -> None:
    parser.add_argument("--json", action="store_true", help=help)


def add_seed(parser: Any, help: str = "random seed", default: int = 0) -> None:
    add_number(parser, "--seed", rng=SEED, default=default, help=help)


def add_fp16(parser: Any, help: str = "FP16 instead of FP32") -> None:
    parser.add_argument("--fp16", action="store_true", help=help)


def add_threads(parser: Any, help: str = "CPU threads (ort/torch on the CPU; default 1)") -> None:
    add_number(parser, "--threads", rng=THREADS, default=None, help=help)


def add_batch(parser: Any, default: int | None = 16, help: str = "batch size") -> None:
    add_number(parser, "--batch", rng=BATCH, default=default, help=help)


def add_scale(parser: Any, default: float = 1.0, help: str = "channel scale") -> None:
    add_number(parser, "--scale", rng=SCALE, default=default, help=help)


def add_rounds(parser: Any, help: str = "interleaved rounds per entry (protocol default 15)") -> None:
    add_number(parser, "--rounds", rng=ROUNDS, default=None, help=help)


def add_quiet(parser: Any) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
