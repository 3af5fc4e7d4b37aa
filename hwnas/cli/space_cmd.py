"""`hwnas space list|show`: the search spaces, their ops and layer positions."""

from __future__ import annotations

import argparse
from typing import Any

from hwnas.cli.options import add_json, add_scale
from hwnas.cli.output import print_json, table
from hwnas.spaces import builtin, resolve_macro, resolve_space

# The macro-architecture each built-in space was searched with (NSE (Ci et al., ICCV 2021)).
DEFAULT_MACRO = {"latency19": "latency", "flops27": "flops", "flops27+second45": "flops"}


def register(sub: Any) -> None:
    space = sub.add_parser("space", help="list and show search spaces",
                           description="List the search spaces or show one: its ops and layer positions.")
    ssub = space.add_subparsers(dest="space_command", metavar="ACTION", parser_class=type(space))
    ssub.required = True
    lst = ssub.add_parser("list", help="list the built-in search spaces")
    add_json(lst)
    lst.set_defaults(func=cmd_list)
    show = ssub.add_parser("show", help="show a space's ops and the layer positions of its macro-architecture")
    show.add_argument("space", metavar="NAME|FILE", help="built-in space name or a JSON/YAML file")
    show.add_argument("--macro", metavar="NAME|FILE",
                      help="macro-architecture for the positions (default: the one the space was searched with)")
    add_scale(show, help="channel scale for the positions (default 1.0)")
    add_json(show)
    show.set_defaults(func=cmd_show)


def cmd_list(args: argparse.Namespace) -> int:
    rows = [{"name": n, "ops": len(s.ops), "macro": DEFAULT_MACRO.get(n)} for n, s in builtin().spaces.items()]
    if args.json:
        print_json(rows)
    else:
        print(table([[r["name"], r["ops"], r["macro"]] for r in rows], ["space", "ops", "macro"]))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    space = resolve_space(args.space)
    macro_ref = args.macro or DEFAULT_MACRO.get(space.name)
    macro = resolve_macro(macro_ref) if macro_ref else None
    positions = macro.positions(args.scale) if macro else []
    ops: list[dict[str, Any]] = [{"index": i, "name": op.name, "kind": op.kind, "kernel": op.kernel, "expand": op.expand,
            "dilation": op.dilation, "groups": list(op.groups)} for i, op in enumerate(space.ops)]
    pos: list[dict[str, Any]] = [{"key": p.key, "type": p.cell_type, "cin": p.cin, "cout": p.cout, "resolution": p.resolution,
            "stride": p.stride} for p in positions]
    if args.json:
        print_json({"space": space.name, "macro": macro.name if macro else None, "scale": args.scale,
                    "ops": ops, "positions": pos})
        return 0
    print(f"space {space.name}: {len(ops)} ops")
    print(table([[o["index"], o["name"], o["kind"], o["kernel"], o["expand"], o["dilation"],
                  "x".join(map(str, o["groups"]))] for o in ops],
                ["index", "name", "kind", "k", "T", "dilation", "groups"]))
    if macro:
        print(f"\nlayer positions of macro {macro.name} at scale {args.scale}: {len(pos)} "
              f"(a table needs {len(pos) * len(ops)} op entries)")
        print(table([[p["key"], p["type"], p["cin"], p["cout"], p["resolution"], p["stride"]] for p in pos],
                    ["key", "type", "cin", "cout", "resolution", "stride"]))
    else:
        print("\n(no macro-architecture given: pass --macro to list layer positions)")
    return 0
