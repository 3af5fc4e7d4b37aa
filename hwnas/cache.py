"""Where hwnas keeps what it builds for the machine it runs on (the compiled kernels): `$HWNAS_CACHE`,
by default `~/.cache/hwnas`. One home, so that every builder and the docs agree on it."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """The cache folder (or a folder inside it); not created here."""
    return Path(os.environ.get("HWNAS_CACHE") or Path.home() / ".cache" / "hwnas").joinpath(*parts)


def kernel_dir() -> Path:
    """Where the compiled kernels (and the verdicts of their first-use checks) are kept."""
    return cache_dir("kernels")
