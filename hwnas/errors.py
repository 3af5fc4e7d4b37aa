"""The package's exceptions and the lazy import of optional dependencies.

`HwnasError` is a user error (bad input, missing backend): the CLI prints its message as one
line and exits 1. Any other exception is a bug in hwnas: the CLI says so in one line, with
where to report it (BUG_REPORT) and the --debug flag that prints the traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Where a bug is reported: the one place to change it.
BUG_REPORT = ("please report it on the hwnas issue tracker (the project's repository, 'Issues') with the "
              "command line and that traceback")


class HwnasError(Exception):
    """A problem with the user's input or environment, with a message saying how to fix it."""


class SpecError(HwnasError):
    """A malformed space, macro-architecture or architecture; the message names the field."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional dependency, or fail saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise HwnasError(
            f"{purpose} needs the Python module '{module}', which is not installed "
            f"({exc}); install it with: pip install 'hwnas[{extra}]'"
        ) from None
