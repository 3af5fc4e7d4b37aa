"""The `hwnas` command: argument parsing, dispatch, and the one place errors are printed.

Usage errors exit 2, user errors (HwnasError) exit 1; both print one line, no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hwnas import __version__
from hwnas.errors import HwnasError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line instead of argparse's usage block; --help has the details.
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from hwnas.cli import arch_cmd, bench_cmd, export_cmd, search_cmd, space_cmd, table_cmd

    parser = _Parser(prog="hwnas", description=(
        "Hardware-aware NAS for GPUs: describe NSE search spaces and networks, count their "
        "MACs and parameters, and (with a profiling backend) build latency lookup tables."))
    parser.add_argument("--version", action="version", version=f"hwnas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    arch_cmd.register(sub)
    space_cmd.register(sub)
    table_cmd.register(sub)
    search_cmd.register(sub)
    export_cmd.register(sub)
    bench_cmd.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HwnasError as exc:
        print(f"hwnas: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hwnas: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
