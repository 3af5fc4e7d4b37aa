"""The `hwnas` command: argument parsing, dispatch, and the one place errors are printed.

Exit codes: 0 success; 1 a problem with the input or the environment (HwnasError, I/O errors
such as an unwritable path or a full disk, a missing backend); 2 usage (argparse); 130
interrupted; 3 a bug in hwnas. Every failure prints one line; `--debug` adds the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from hwnas._version import __version__
from hwnas.errors import BUG_REPORT, HwnasError

EXIT_USER, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 1, 2, 3, 130
DEBUG_FLAG = "--debug"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line instead of argparse's usage block; --help has the details.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from hwnas.cli import arch_cmd, bench_cmd, env_cmd, export_cmd, search_cmd, space_cmd, table_cmd

    parser = _Parser(prog="hwnas", description=(
        "Hardware-aware NAS for GPUs: describe NSE search spaces and networks, count their "
        "MACs and parameters, and (with a profiling backend) build latency lookup tables."),
        epilog="Exit status: 0 done, 1 bad input or environment (one line says what and how to fix it), "
               "2 usage, 3 a bug in hwnas, 130 interrupted. Outputs are written whole or not at all.")
    parser.add_argument("--version", action="version", version=f"hwnas {__version__}")
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help="on failure also print the Python traceback (accepted anywhere on the line; "
                             "or set HWNAS_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    arch_cmd.register(sub)
    space_cmd.register(sub)
    table_cmd.register(sub)
    search_cmd.register(sub)
    export_cmd.register(sub)
    bench_cmd.register(sub)
    env_cmd.register(sub)
    return parser


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _say(message: str) -> None:
    print("hwnas: " + " ".join(message.split()), file=sys.stderr)


def _interrupted() -> str:
    from hwnas import files

    kept = [f"kept {p} (written whole)" for p in dict.fromkeys(files.WRITTEN)]
    said = kept + list(dict.fromkeys(files.INTERRUPT_NOTES))
    return "interrupted; " + ("; ".join(said) if said else "no output was written")


def main(argv: Sequence[str] | None = None) -> int:
    from hwnas import files

    args_list = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere (people add it at the end of the failing command).
    debug = DEBUG_FLAG in args_list or os.environ.get("HWNAS_DEBUG", "") not in ("", "0")
    args_list = [a for a in args_list if a != DEBUG_FLAG]
    files.WRITTEN.clear()
    files.INTERRUPT_NOTES.clear()
    try:
        args = build_parser().parse_args(args_list)
    except SystemExit as exc:  # --help, --version (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        _say(_interrupted())
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (e.g. `| head`): not an error
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), sys.stdout.fileno())
        return 0
    except HwnasError as exc:
        if debug:
            traceback.print_exc()
        _say(f"error: {exc}")
        return EXIT_USER
    except OSError as exc:  # I/O the command did not anticipate: still the user's environment
        if debug:
            traceback.print_exc()
        _say(f"error: {files.os_error_message(exc)}")
        return EXIT_USER
    except MemoryError:
        if debug:
            traceback.print_exc()
        _say("error: out of memory: use a smaller --batch or fewer --threads, or a machine with more memory")
        return EXIT_USER
    except Exception as exc:  # noqa: BLE001 - anything else is a bug, said in one line
        if type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (CUDA)
            _say(f"error: the device ran out of memory ({_one_line(str(exc), 120)}): use a smaller --batch")
            return EXIT_USER
        if debug:
            traceback.print_exc()
        how = "the traceback is above" if debug else f"rerun with {DEBUG_FLAG} for the traceback"
        _say(f"internal error: {type(exc).__name__}: {_one_line(str(exc), 200)} -- this is a bug in hwnas; "
             f"{how} and {BUG_REPORT}")
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
