"""How closely two builds of one table agree, entry by entry.

    python benchmarks/bench_table_agreement.py FIRST.json SECOND.json [--json]

Two builds on one machine (e.g. two `hwnas table build` runs in a row) are compared in two ways:

- referred (judged): each entry's ratio to the reference network, i.e. both tables referred to
  one machine state through the reference they both timed in every round. This is what the
  protocol promises to hold while the machine's speed drifts; it is also the table a merge or a
  resumed build gives.
- as written (reported beside): each entry's latency in ms, each at its own build's reference
  level; it differs from the referred figure by the ratio of the two levels, i.e. by how
  differently the machine ran during the two builds.

Target: at least 98% of entries within +-5% of each other and all within +-10% (referred).
Tables of format 1 have no ratios: they are compared as written only.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hwnas.profiling.table import Table

WITHIN_5_TARGET, WITHIN_10_TARGET = 0.98, 1.0


def compare(a: dict[str, float], b: dict[str, float]) -> dict[str, Any]:
    """Relative differences |b / a - 1| over the keys of both, with the worst entries named."""
    keys = [k for k in a if k in b]
    rel = {k: abs(b[k] / a[k] - 1) for k in keys}
    worst = sorted(keys, key=rel.__getitem__, reverse=True)[:5]
    return {"n": len(keys), "within_5pct": sum(r <= 0.05 for r in rel.values()) / len(keys),
            "within_10pct": sum(r <= 0.10 for r in rel.values()) / len(keys),
            "max": max(rel.values()), "median": sorted(rel.values())[len(keys) // 2],
            "worst": [[k, round(rel[k], 4)] for k in worst]}


def agreement(first: Table, second: Table) -> dict[str, Any]:
    def column(table: Table, field: str) -> dict[str, float]:
        return {k: float(e[field]["median"]) for k, e in table.entries.items() if field in e}

    out: dict[str, Any] = {"as_written": compare(column(first, "latency"), column(second, "latency"))}
    ratios = column(first, "ratio"), column(second, "ratio")
    if ratios[0] and ratios[1]:
        out["referred"] = compare(*ratios)
        levels = [t.meta["reference_level"]["level_ms"] for t in (first, second)]
        out["reference_levels_ms"] = levels
        out["second_vs_first_level"] = round(levels[1] / levels[0], 4)
    judged = out.get("referred", out["as_written"])
    out["judged"] = "referred" if "referred" in out else "as_written"
    out["targets_met"] = judged["within_5pct"] >= WITHIN_5_TARGET and judged["within_10pct"] >= WITHIN_10_TARGET
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = agreement(Table.load(args.first), Table.load(args.second))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k:>22}: {v}")
    return 0 if result["targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
