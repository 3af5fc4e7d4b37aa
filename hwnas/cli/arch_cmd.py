"""`hwnas arch list|show`: the architectures and what they cost."""

from __future__ import annotations

import argparse
from typing import Any

from hwnas.cli.options import add_json
from hwnas.cli.output import millions, print_json, table
from hwnas.costs import network_cost, op_cost
from hwnas.spaces import builtin, resolve_architecture
from hwnas.spaces.arch import Architecture


def register(sub: Any) -> None:
    arch = sub.add_parser("arch", help="list and show architectures (networks)",
                          description="List the built-in architectures or show one with its costs.")
    asub = arch.add_subparsers(dest="arch_command", metavar="ACTION", parser_class=type(arch))
    asub.required = True
    lst = asub.add_parser("list", help="list the built-in architectures")
    add_json(lst)
    lst.set_defaults(func=cmd_list)
    show = asub.add_parser(
        "show", help="show an architecture cell by cell with MACs and params",
        description="Show an architecture: per cell its layer position and ops with MACs and params "
                    "(for one 224x224 image), plus stem, head and totals.")
    show.add_argument("arch", metavar="NAME|FILE",
                      help="built-in name (see 'hwnas arch list'), a JSON/YAML file, or FILE:NAME")
    add_json(show)
    show.set_defaults(func=cmd_show)


def arch_report(arch: Architecture) -> dict[str, Any]:
    """Costs of an architecture, in the JSON layout of `hwnas arch show --json`."""
    cost = network_cost(arch)
    cells = []
    for pc, cc in zip(arch.placed, cost.cells):
        pos = pc.slot.position
        cells.append({
            "index": pc.slot.index, "stage": pc.slot.stage + 1, "type": pos.cell_type,
            "position": pos.key, "macs": cc.macs, "params": cc.params,
            "ops": [{"index": i, "name": arch.space.ops[i].name, "macs": c.macs, "params": c.params}
                    for i, c in ((i, op_cost(arch.space.ops[i], pos)) for i in pc.ops)],
        })
    total = cost.total
    return {
        "name": arch.name, "space": arch.space.name, "macro": arch.macro.name, "scale": arch.scale,
        "input": arch.macro.input, "macs": total.macs, "params": total.params,
        "stem": {"macs": cost.stem.macs, "params": cost.stem.params},
        "head": {"macs": cost.head.macs, "params": cost.head.params},
        "cells": cells,
    }


def cmd_list(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    for name, arch in sorted(builtin().networks.items()):
        total = network_cost(arch).total
        rows.append({"name": name, "space": arch.space.name, "macro": arch.macro.name,
                     "scale": arch.scale, "cells": len(arch.cells), "macs": total.macs,
                     "params": total.params})
    if args.json:
        print_json(rows)
    else:
        print(table([[r["name"], r["space"], r["macro"], r["scale"], r["cells"], millions(r["macs"]),
                      millions(r["params"])] for r in rows],
                    ["name", "space", "macro", "scale", "cells", "MACs", "params"]))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    report = arch_report(resolve_architecture(args.arch))
    if args.json:
        print_json(report)
        return 0
    print(f"{report['name']}: space {report['space']}, macro {report['macro']}, scale {report['scale']}, "
          f"input {report['input']}x{report['input']}")
    print(f"stem: {millions(report['stem']['macs'])} MACs, {report['stem']['params']:,} params")
    for cell in report["cells"]:
        print(f"\ncell {cell['index']} (stage {cell['stage']}) {cell['position']}")
        if not cell["ops"]:
            print("  identity (no branch selected)")
            continue
        rows = [[op["index"], op["name"], op["macs"], op["params"]] for op in cell["ops"]]
        if len(rows) > 1:
            rows.append(["", "cell total", cell["macs"], cell["params"]])
        print(table(rows, ["op", "name", "MACs", "params"]))
    print(f"\nhead: {millions(report['head']['macs'])} MACs, {report['head']['params']:,} params")
    print(f"total: {report['macs']:,} MACs ({millions(report['macs'])}), "
          f"{report['params']:,} params ({millions(report['params'])}) per 224x224 image")
    return 0
