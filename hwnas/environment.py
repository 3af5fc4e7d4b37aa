"""Settings read from the environment (HWNAS_*): one of a few words, or a one-line refusal."""

from __future__ import annotations

import os

from hwnas.errors import HwnasError


def env_choice(name: str, choices: tuple[str, ...], explain: str) -> str:
    """$name, stripped and lower-cased, if it is one of `choices`; unset or empty: the first.
    Another value is refused as "NAME='value'" followed by `explain` (what each choice does)."""
    value = os.environ.get(name, "").strip().lower() or choices[0]
    if value not in choices:
        raise HwnasError(f"{name}={os.environ[name]!r}{explain}")
    return value
