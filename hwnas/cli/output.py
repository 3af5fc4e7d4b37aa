"""Printing helpers shared by the commands: JSON for scripts, tabulate tables for people."""

from __future__ import annotations

import json
from typing import Any

from tabulate import tabulate


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def table(rows: list[list[Any]], headers: list[str]) -> str:
    return tabulate(rows, headers=headers, intfmt=",", floatfmt=".3f")


def millions(n: int) -> str:
    return f"{n / 1e6:,.2f}M"
