"""The lookup tables shipped with hwnas, by name, from any folder and any install:
`Table.load("latency19_ort-cpu_b16")`, `hwnas predict --table latency19_macs ...`.

The tables live in the project's top-level latency_tables/ folder (with their validation
reports, which are not tables). A wheel carries the tables as package data of hwnas.data (the
build copies them to hwnas/data/tables/, see setup.py), found through importlib.resources; an
editable install or a checkout on PYTHONPATH reads them from latency_tables/ beside the package.
A path that exists always wins over a shipped name.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

PACKAGED = "tables"  # the folder inside hwnas.data that a wheel ships them in
CHECKOUT = "latency_tables"


def is_table_file(path: Path) -> bool:
    """A shipped table, not a validation report beside it."""
    return path.suffix == ".json" and ".validation" not in path.name


@functools.lru_cache(maxsize=1)
def tables_dir() -> Path | None:
    """The folder of the shipped tables (a real path), or None when this install has none."""
    packaged = resources.files("hwnas.data") / PACKAGED
    checkout = Path(__file__).resolve().parents[2] / CHECKOUT
    for candidate in (packaged, checkout):
        if isinstance(candidate, Path) and candidate.is_dir() and any(map(is_table_file, candidate.iterdir())):
            return candidate
    return None


def names() -> list[str]:
    """The names of the shipped tables (their file names without .json)."""
    folder = tables_dir()
    return sorted(p.stem for p in folder.iterdir() if is_table_file(p)) if folder else []


def resolve(ref: str | Path) -> Path:
    """The file a table reference names: a path that exists as it is, else a shipped table's name
    (with or without .json), else the path as given (its reader says it is missing)."""
    path = Path(ref)
    if path.exists() or len(path.parts) != 1:
        return path
    name = path.name[:-5] if path.name.endswith(".json") else path.name
    folder = tables_dir()
    if folder is not None and name in names():
        return folder / f"{name}.json"
    return path
