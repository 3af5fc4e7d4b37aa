"""The package's exceptions and the lazy import of optional dependencies.

`HwnasError` is a user error (bad input, missing backend): the CLI prints its message as one
line and exits 1. Any other exception is a bug in hwnas and keeps its traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType


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
