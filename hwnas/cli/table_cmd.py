"""`hwnas table build|merge|calibrate|transfer|show`, `hwnas predict`, `hwnas validate`: lookup tables and their use."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hwnas.cli import options as opt
from hwnas.cli.options import add_json, add_quiet, add_seed
from hwnas.cli.output import millions, print_json, table
from hwnas.profiling.backends import backend_names
from hwnas.profiling.validate import DEFAULT_SAMPLES


def register(sub: Any) -> None:
    tbl = sub.add_parser("table", help="build and inspect latency/MACs lookup tables",
                         description="Lookup tables: one entry per (operation, layer position), plus stem, "
                                     "head and the merge of multi-branch cells.")
    tsub = tbl.add_subparsers(dest="table_command", metavar="ACTION", parser_class=type(tbl))
    tsub.required = True
    build = tsub.add_parser(
        "build", help="profile every op at every position and write a table",
        description="Profile every candidate op of SPACE at every layer position of MACRO and write a table. "
                    "Each position's entries are timed in interleaved rounds with a reference network (the "
                    "space's cheapest op at every position) in every round; an entry is its median ratio "
                    "to the reference times the reference's level over the build, so a machine whose speed "
                    "drifts during the build still gives entries of one machine state (docs/protocol.md). "
                    "The file is rewritten atomically after every group of entries; an interrupted build "
                    "continues with --resume.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    build.add_argument("--space", required=True, metavar="NAME|FILE", help="search space")
    build.add_argument("--macro", required=True, metavar="NAME|FILE", help="macro-architecture")
    opt.add_scale(build)
    build.add_argument("--backend", choices=backend_names(), default="ort",
                       help="ort: onnxruntime CPU; torch: eager PyTorch (CUDA if present); tensorrt: "
                            "TensorRT engines on a GPU; none: MACs and params only")
    opt.add_batch(build, help="batch size the latencies are measured at")
    build.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    opt.add_threads(build)
    opt.add_rounds(build)
    opt.add_seed(build, help="seed of weights and measurement order")
    build.add_argument("-o", "--output", required=True, help="table file (JSON)")
    build.add_argument("--resume", action="store_true", help="continue an interrupted build of the same table")
    build.add_argument("--shard", type=_shard, metavar="I/N", default=None,
                       help="measure only shard I of N (numbered from 1): a slice of the entries of about 1/N "
                            "of the estimated time, written as a part for 'hwnas table merge'; run the N "
                            "shards on N devices of one type (e.g. CUDA_VISIBLE_DEVICES=I-1), with the same "
                            "options and software. Calibration waits for the merged table")
    opt.add_quiet(build)
    build.set_defaults(func=cmd_build)

    merge = tsub.add_parser(
        "merge", help="combine the parts of a sharded build into one table",
        description="Combine the N parts written by 'hwnas table build --shard I/N' into the table a single "
                    "build would have written. Refuses parts measured on another device type, driver, "
                    "software version, protocol or setting (naming the field), a part given twice, entries "
                    "in two parts, and missing parts or entries. Parts whose devices ran at different "
                    "speeds are re-anchored through the reference network each one timed: the merged "
                    "entries are their ratios times one level, the median over all parts. A table that "
                    "measures latency then needs 'hwnas table calibrate' on one device of the parts' type.")
    merge.add_argument("parts", nargs="+", metavar="PART", help="part files, all N of them, in any order")
    merge.add_argument("-o", "--output", required=True, help="merged table file (JSON)")
    merge.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    add_json(merge, help="print a summary of the parts as JSON")
    merge.set_defaults(func=cmd_merge)

    cal = tsub.add_parser(
        "calibrate", help="time random networks whole and record the table's calibration factor",
        description="Time the protocol's calibration architectures (random networks of the table's space) "
                    "whole, set the factor that maps summed entries to whole networks, and mark the table "
                    "complete; the file is rewritten atomically. A single build calibrates by itself; a "
                    "merged sharded build is calibrated once, on one device of its parts' type, with the "
                    "same backend options and software.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    cal.add_argument("table", help="table file, rewritten in place")
    add_seed(cal, help="seed of the calibration architectures (as in build)")
    add_quiet(cal)
    cal.set_defaults(func=cmd_calibrate)

    tr = tsub.add_parser(
        "transfer", help="a table for this device from another device's table, measuring a tenth of it",
        description="Measure on this device a chosen part of SOURCE's entries (at most --budget of them, with "
                    "the table build's protocol: ratios to a reference network timed in every round), predict the others from SOURCE and the measured ones with a "
                    "small per-kind model (every transferred entry with its uncertainty), calibrate on whole "
                    "networks as a build does, and write a table that predict, validate and the search use like "
                    "any other. The entries are chosen to cover every op kind, kernel size, expansion, stride, "
                    "cell type and resolution, then where SOURCE tells least. SOURCE must be a whole, measured "
                    "latency table; --space, --macro, --scale and --batch, when given, must be SOURCE's. "
                    "The method and its limits: docs/transfer.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    tr.add_argument("--from", dest="source", required=True, metavar="SOURCE", help="table measured on another device")
    tr.add_argument("--backend", choices=[b for b in backend_names() if b != "none"], default="ort",
                    help="this device's backend, as in 'hwnas table build'")
    opt.add_number(tr, "--budget", rng=opt.SHARE, default=0.1,
                   help="largest fraction of SOURCE's entries measured on this device")
    tr.add_argument("--space", metavar="NAME|FILE", help="refuse unless SOURCE is of this space")
    tr.add_argument("--macro", metavar="NAME|FILE", help="refuse unless SOURCE is of this macro-architecture "
                                                         "(and its input resolution)")
    opt.add_number(tr, "--scale", rng=opt.SCALE, default=None, help="refuse unless SOURCE has this channel scale")
    opt.add_batch(tr, default=None, help="refuse unless SOURCE was measured at this batch")
    tr.add_argument("--precision", choices=["fp32", "fp16"], default="fp32", help="this device's precision")
    opt.add_threads(tr)
    opt.add_rounds(tr)
    opt.add_seed(tr, help="seed of weights and measurement order (the selection does not depend on it)")
    tr.add_argument("-o", "--output", required=True, help="new table file (JSON)")
    tr.add_argument("--resume", action="store_true", help="continue an interrupted transfer into the same file")
    opt.add_json(tr, help="print a summary as JSON")
    opt.add_quiet(tr)
    tr.set_defaults(func=cmd_transfer)

    show = tsub.add_parser("show", help="summarise a table: metadata and entries")
    show.add_argument("table", help="table file")
    opt.add_json(show, help="print the metadata as JSON")
    show.set_defaults(func=cmd_show)

    pred = sub.add_parser("predict", help="price an architecture with a table",
                          description="Predict an architecture's latency (when the table is profiled), MACs "
                                      "and params from a lookup table.")
    pred.add_argument("--table", required=True, help="table file")
    pred.add_argument("arch", metavar="NAME|FILE", help="architecture: built-in name, file, or FILE:NAME")
    opt.add_batch(pred, default=None, help="refuse unless the table was measured at this batch")
    pred.add_argument("--check", action="store_true",
                      help="also time the table's reference network now (one small network, on the table's "
                           "device and backend) and say how the machine runs now against the table's build, e.g. "
                           "'1.13x slower': the prediction is for the machine as it ran then")
    opt.add_json(pred)
    pred.set_defaults(func=cmd_predict)

    val = sub.add_parser(
        "validate", help="check a table's predictions against end-to-end measurements",
        description="Sample random architectures of the table's space (every branch Bernoulli(0.5), "
                    "R/E cells non-empty; sparser with --branches), time each whole network with the "
                    "table's backend and protocol, interleaved with the table's reference network, refer "
                    "it to the machine state of the table's build through the reference, and compare with "
                    "the table's predictions.")
    val.add_argument("--table", required=True, help="table file")
    opt.add_number(val, "--samples", rng=opt.SAMPLES, default=DEFAULT_SAMPLES, help="number of random architectures")
    opt.add_seed(val)
    opt.add_rounds(val, help="override the table protocol's rounds")
    val.add_argument("--recalibrate", action="store_true",
                     help="first re-time the table's calibration architectures on the current device and "
                          "also report predictions with that factor ('recalibrated'): on a shared "
                          "machine the factor moves with the machine's state")
    val.add_argument("--branches", type=branch_range, metavar="FEWEST-MOST", default=None,
                     help="sample sparser networks: their mean branches per cell evenly spaced from MOST down to "
                          "FEWEST, as the calibration's (e.g. 1-3; numbers > 0, MOST at most the space's ops); "
                          "default: every branch with probability 0.5")
    val.add_argument("--no-reference", dest="reference", action="store_false", default=True,
                     help="do not time the table's reference network in every round; by default it is, and "
                          "each latency is its ratio to the reference times the table's reference level, "
                          "i.e. referred to the machine state of the build ('measured_ms'; as timed: "
                          "'raw_ms' and the 'raw' metrics)")
    val.add_argument("--plot", metavar="PNG", help="write a predicted-vs-measured scatter plot")
    val.add_argument("-o", "--output", metavar="JSON", help="also write the full report to this file")
    opt.add_json(val)
    opt.add_quiet(val)
    val.set_defaults(func=cmd_validate)


def branch_range(text: str) -> tuple[float, float]:
    """FEWEST-MOST: two numbers > 0, the fewest first."""
    import re

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*-\s*([0-9]*\.?[0-9]+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not FEWEST-MOST: write e.g. 1-3 (branches per cell)")
    fewest, most = opt.POSITIVE(match[1]), opt.POSITIVE(match[2])
    if fewest > most:
        raise argparse.ArgumentTypeError(f"{text!r}: FEWEST must not exceed MOST (write e.g. 1-3)")
    return float(fewest), float(most)


def _shard(text: str) -> Any:
    from hwnas.errors import HwnasError
    from hwnas.profiling.shards import Shard

    try:
        return Shard.parse(text)
    except HwnasError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_build(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from hwnas import files
    from hwnas.profiling.backends import get_backend
    from hwnas.profiling.build import build_table
    from hwnas.profiling.protocol import Protocol
    from hwnas.spaces import resolve_macro, resolve_space

    space, macro = resolve_space(args.space), resolve_macro(args.macro)
    if args.shard:  # a shard this table cannot have is refused before the output's folder is made
        from hwnas.profiling.entries import plan_groups
        from hwnas.profiling.shards import estimated_share, owned

        groups = plan_groups(space, macro, args.scale, args.batch)
        share = f"{len(owned(groups, args.shard))} of {sum(map(len, groups))} entries"
    files.check_writable(args.output, "table")
    backend = get_backend(args.backend, precision=args.precision, threads=args.threads)
    protocol = Protocol()
    if args.rounds is not None:
        protocol = replace(protocol, rounds=args.rounds)
    if args.shard and not args.quiet:
        print(f"shard {args.shard}: {share}, {estimated_share(groups, args.shard):.1%} of the estimated time",
              file=sys.stderr)
    with files.exclusive(args.output, "table"):  # two builds into one file would undo each other's groups
        files.on_interrupt(f"{args.output} holds every group measured so far (if any): run the same command "
                           f"with --resume to continue")
        tbl = build_table(space, macro, args.scale, backend, args.batch, args.output, resume=args.resume,
                          protocol=protocol, seed=args.seed, progress=not args.quiet, shard=args.shard)
    flagged = sum(1 for e in tbl.entries.values() if e.get("latency", {}).get("flags"))
    what = f"part {args.shard} of a table" if args.shard else "table"
    print(f"wrote {what} {args.output}: {len(tbl.entries)} entries ({args.backend}, batch {args.batch})"
          + (f", {flagged} flagged (see 'hwnas table show')" if flagged else "")
          + (f"; merge the parts with 'hwnas table merge'" if args.shard else ""))
    for line in _reference_lines(tbl.meta) + _calibration_lines(tbl.meta):
        print(line)
    _warn_calibration(tbl.meta.get("calibration", {}))
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from hwnas import files
    from hwnas.errors import HwnasError
    from hwnas.profiling.backends import get_backend
    from hwnas.profiling.protocol import Protocol
    from hwnas.profiling.table import Table
    from hwnas.profiling.transfer import check_source, transfer_summary, transfer_table
    from hwnas.spaces import resolve_macro, resolve_space

    source = Table.load(args.source)
    check_source(source, args.source, resolve_space(args.space) if args.space else None,
                 resolve_macro(args.macro) if args.macro else None, args.scale, args.batch)
    files.check_writable(args.output, "table")
    if Path(args.output).resolve() == Path(args.source).resolve():
        raise HwnasError(f"-o {args.output} is the source table: write the new table to another file")
    backend = get_backend(args.backend, precision=args.precision, threads=args.threads)
    protocol = Protocol()
    if args.rounds is not None:
        protocol = replace(protocol, rounds=args.rounds)
    with files.exclusive(args.output, "table"):
        files.on_interrupt(f"{args.output} holds every group measured so far (if any): run the same command "
                           f"with --resume to continue")
        tbl = transfer_table(source, args.source, backend, args.output, args.budget, protocol, args.seed,
                             progress=not args.quiet, resume=args.resume)
    summary = transfer_summary(tbl)
    if args.json:
        print_json({"output": args.output, **summary})
        return 0
    fit = summary["held_out"]
    print(f"wrote {args.output}: {summary['entries']} entries, {summary['measured']} measured on this device "
          f"({summary['measured'] / summary['entries']:.1%}), {summary['transferred']} transferred from "
          f"{summary['source']} ({summary['source_device']}); calibration factor {summary['calibration_factor']}")
    print(f"held-back fit (leave-one-out over the measured entries): MAPE {fit['mape']:.1%}, "
          f"{fit['within_10pct']:.0%} within ±10%, worst {fit['max_error']:.1%}; median uncertainty of a "
          f"transferred entry ±{summary['median_uncertainty']:.1%}; {summary['seconds']:.0f} s")
    for line in _reference_lines(tbl.meta) + _calibration_lines(tbl.meta):
        print(line)
    _warn_calibration(tbl.meta.get("calibration", {}))
    return 0


def _reference_lines(meta: dict[str, Any]) -> list[str]:
    """How the reference ran over the build: its level, the range of its groups, after each resume."""
    record = meta.get("reference_level")
    if not record or "level_ms" not in record:
        return []
    groups = record["groups"]
    lo, hi = record["range"]
    lines = [f"reference network ({meta['reference']['op']} at every position): level {record['level_ms']:.4g} ms, "
             f"the median over {len(groups)} groups, which ran at {lo:.2f}-{hi:.2f}x it; every entry is its ratio "
             f"to the reference times that level"]
    resumes = sorted({g.get("resumed", 0) for g in groups})
    if len(resumes) > 1:
        from hwnas.profiling.reference import level_ms, speed_words

        def level_after(k: int) -> float:
            return level_ms([g for g in groups if g.get("resumed", 0) == k])

        later = "; ".join(f"after resume {k} the machine ran {speed_words(level_after(k) / level_after(0), 'before')}"
                          for k in resumes[1:])
        lines.append(f"resumed {len(resumes) - 1} time(s) ({later}): all entries stay referred to one level "
                     f"through the reference")
    return lines


def _calibration_lines(meta: dict[str, Any]) -> list[str]:
    c = meta.get("calibration")
    if not c:
        return []
    cost = (f"; {c['rounds']} rounds, {c['seconds']:.0f} s, each network's ratio known to {c['precision']:.2%}"
            if "seconds" in c else "")
    return [f"calibration factor {c['factor']} (median measured/summed over {c['architectures']} random "
            f"architectures timed whole{cost})"]


def cmd_merge(args: argparse.Namespace) -> int:
    from hwnas.errors import HwnasError
    from hwnas.files import check_writable, exclusive
    from hwnas.profiling.shards import merge
    from hwnas.profiling.table import Table

    out = Path(args.output)
    if any(Path(p).resolve() == out.resolve() for p in args.parts):
        raise HwnasError(f"-o {out} is one of the parts: write the merged table to another file")
    if out.is_file() and not args.force:
        raise HwnasError(f"{out} exists; choose another -o, or pass --force to overwrite it")
    # every part read and checked before anything is written (check_writable makes missing folders)
    merged = merge([(p, Table.load(p)) for p in args.parts])
    check_writable(out, "merged table")
    with exclusive(out, "merged table"):
        if out.exists() and not args.force:  # written meanwhile by another process
            raise HwnasError(f"{out} exists; choose another -o, or pass --force to overwrite it")
        merged.save(out)
    shards = merged.meta["shards"]
    if args.json:
        print_json({"output": str(out), "entries": len(merged.entries), "complete": merged.meta["complete"],
                    "shards": shards})
        return 0
    levels = [s["reference_level_ms"] for s in shards]
    timed = all(level is not None for level in levels)
    print(table([[s["shard"], s["entries"], s["created"], s["updated"]]
                 + ([f"{s['reference_level_ms']:.4g}"] if timed else []) for s in shards],
                ["shard", "entries", "created", "updated"] + (["reference ms"] if timed else [])))
    if timed:
        level = merged.meta["reference_level"]["level_ms"]
        print(f"the parts' reference levels are {max(levels) / min(levels) - 1:.1%} apart; every entry is its ratio "
              f"to the reference on its own device times one level, {level:.4g} ms (the median over all parts)")
    print(f"wrote {out}: {len(merged.entries)} entries from {len(shards)} parts"
          + ("" if merged.meta["complete"] else f"; calibrate it on one device of the parts' type: "
                                                f"hwnas table calibrate {out}"))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from hwnas.profiling.build import calibrate_file

    tbl = calibrate_file(args.table, seed=args.seed, progress=not args.quiet)
    c = tbl.meta["calibration"]
    print(f"calibrated {args.table}: " + _calibration_lines(tbl.meta)[0])
    _warn_calibration(c)
    return 0


def _warn_calibration(calibration: dict[str, Any]) -> None:
    from hwnas.profiling.validate import calibration_warning

    warning = calibration_warning(calibration)
    if warning:
        print(f"hwnas: warning: {warning}", file=sys.stderr)


def cmd_show(args: argparse.Namespace) -> int:
    from hwnas.profiling.table import Table

    tbl = Table.load(args.table)
    if args.json:
        print_json(tbl.meta)
        return 0
    m = tbl.meta
    dev = m.get("device", {})
    print(f"{args.table}: space {m['space']}, macro {m['macro']}, scale {m['scale']}, batch {m['batch']}, "
          f"{m['precision']}, backend {m['backend']['name']} {m['backend'].get('version') or ''}".rstrip())
    print(f"device: {dev.get('name', dev.get('type'))}" + (f", {dev['logical_cores']} cores" if "logical_cores" in dev
                                                            else "") + f"; threads {m['backend'].get('threads')}")
    print(f"entries: {len(tbl.entries)}{'' if m.get('complete') else ' (incomplete)'}; statistic "
          f"{m.get('statistic')}; created {m.get('created')}")
    if tbl.part:
        print(f"part of a sharded build: shard {tbl.part}, {len(m['shard']['keys'])} entries of its own; "
              f"merge all parts with 'hwnas table merge'")
    if "shards" in m:
        print(f"merged from {len(m['shards'])} shards" + ("" if m.get("complete") or "calibration" in m else
                                                           "; not calibrated yet: 'hwnas table calibrate'"))
    for line in _reference_lines(m):
        print(line)
    if tbl.version < 2 and tbl.has_latency:
        print(f"format {tbl.version}: entries as timed, with the drift probe (the stem alone, "
              f"{m.get('probe_baseline', {}).get('median')} ms before the first group) as the machine's reference")
    if "calibration" in m:
        from hwnas.profiling.validate import calibration_warning

        c = m["calibration"]
        at = (f" at {', '.join(map(str, c['branches_per_cell']))} branches per cell; spread {c['spread']:.1%}"
              if "branches_per_cell" in c else "")
        cost = f"; {c['rounds']} rounds, {c['seconds']:.0f} s" if "seconds" in c else ""
        print(f"calibration: factor {c['factor']} (median measured/summed over {c['architectures']} random "
              f"architectures timed whole; ratios {c['ratios']}{at}{cost})")
        warning = calibration_warning(c)
        if warning:
            print(f"warning: {warning}")
    if "transfer" in m:
        _show_transfer(tbl)
    if tbl.has_latency:
        from hwnas.profiling.protocol import Stats

        flagged = sum(1 for e in tbl.entries.values() if e["latency"].get("flags"))
        threshold = f"{m['protocol']['cov_threshold']:.0%}"
        print(f"flagged entries: {flagged} (" + (
            f"remeasured: the ratio to the reference varied over {threshold} (robust coefficient of variation), a "
            f"burst that hit the entry and not the reference; unstable: still over after re-measuring)"
            if tbl.version >= 2 else
            f"remeasured: coefficient of variation over {threshold}; unstable: still over after re-measuring; drift: "
            f"the machine changed speed during the group)"))
        rows = [[k, e["latency"]["median"], e["latency"]["min"], f"{Stats.from_dict(e.get('ratio', e['latency'])).spread:.4f}",
                 ",".join(e["latency"].get("flags", []))] for k, e in tbl.entries.items()]
        headers = ["entry", "median ms", "min ms", "spread", "flags"]
        if "transfer" in m:  # a transferred entry's statistics are its prediction
            headers.append("origin")
            for row, key in zip(rows, tbl.entries):
                e = tbl.entries[key]
                row.append(f"transferred ±{e['transfer']['uncertainty']:.1%}" if tbl.origin(key) == "transferred"
                           else "measured")
        print(table(rows, headers))
    else:
        print(table([[k, millions(e["macs"]), e["params"]] for k, e in tbl.entries.items()],
                    ["entry", "MACs", "params"]))
    return 0


def _show_transfer(tbl: Any) -> None:
    from hwnas.profiling.transfer import transfer_summary

    t = transfer_summary(tbl)
    src = tbl.meta["transfer"]["source"]
    fit = t["held_out"]
    where = f"transferred from {t['source']} (device {t['source_device']}, backend {t['source_backend']}, " \
            f"format {src.get('format', 1)}, statistic {src['statistic']}, protocol rounds " \
            f"{(src.get('protocol') or {}).get('rounds')})"
    if fit is None:
        print(f"{where}: unfinished, {t['measured']} of the {len(t['selection'])} selected entries measured; "
              f"continue it with 'hwnas table transfer ... --resume'")
        return
    print(f"{where}: {t['measured']} entries measured on the table's device (budget {t['budget']:.0%}), "
          f"{t['transferred']} transferred, each with its predicted uncertainty (median "
          f"±{t['median_uncertainty']:.1%})")
    print(f"transfer model, leave-one-out over the measured entries: MAPE {fit['mape']:.1%}, "
          f"{fit['within_10pct']:.0%} within ±10%, worst {fit['max_error']:.1%}; a transferred entry is its "
          f"predicted ratio to the reference network (count 0: no runs), in ms at the table's level as the "
          f"measured ones")


def cmd_predict(args: argparse.Namespace) -> int:
    from hwnas.profiling.predict import predict
    from hwnas.profiling.table import Table
    from hwnas.spaces import resolve_architecture

    tbl = Table.load(args.table)
    result = predict(tbl, resolve_architecture(args.arch), args.batch)
    if args.check:
        from hwnas.profiling.reference import check_machine

        result["check"] = check_machine(tbl)
        if "latency_ms" in result:
            result["check"]["latency_ms_now"] = result["latency_ms"] * result["check"]["vs_table"]
    if args.json:
        print_json(result)
        return 0
    timed = "latency_ms" in result

    def ms(part: dict[str, Any], key: str = "latency_ms") -> str:
        return f"{part[key]:.3f}" if timed else "-"

    rows = [["", "stem", "", millions(result["stem"]["macs"]), ms(result["stem"]), ""]]
    for c in result["cells"]:
        rows.append([c["index"], c["position"],
                     " + ".join(o["name"] + ("*" if o.get("origin") == "transferred" else "") for o in c["ops"]),
                     millions(c["macs"]), ms(c), ms(c, "merge_ms")])
    rows.append(["", "head", "", millions(result["head"]["macs"]), ms(result["head"]), ""])
    print(table(rows, ["cell", "position", "ops", "MACs", "latency ms", "of which merge"]))
    line = f"{result['arch']}: {result['macs']:,} MACs, {result['params']:,} params per image"
    if timed:
        line += (f"; predicted {result['latency_ms']:.2f} ms per batch of {result['batch']} ({result['statistic']}), "
                 f"the sum of the latency column: entries x calibration factor {result['calibration_factor']:.4f} "
                 f"(uncalibrated sum {result['latency_ms_uncalibrated']:.2f} ms)")
    print(line)
    if "transferred" in result:
        t = result["transferred"]
        print(f"{t['entries']} of the {t['of']} entries this price reads (* above) were transferred from "
              f"{t['source']} ({t['source_device']}), not measured on this device: {t['share']:.0%} of the latency "
              f"({t['latency_ms']:.2f} ms); 'hwnas table show' gives their uncertainty")
    if args.check:
        check = result["check"]
        print(f"{check['message']} ({check['detail']}); on the machine as it runs now, "
              f"{result['arch']} would take about {check['latency_ms_now']:.2f} ms")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from hwnas import files
    from hwnas.profiling.table import Table
    from hwnas.profiling.validate import plot, plot_format, validate

    # Refuse unwritable outputs and a missing plotter before minutes of measuring.
    for path, what in ((args.output, "report"), (args.plot, "plot")):
        if path:
            files.check_writable(path, what)
    if args.plot:
        plot_format(args.plot)
    report = validate(Table.load(args.table), args.samples, args.seed, progress=not args.quiet, rounds=args.rounds,
                      recalibrate=args.recalibrate, reference=args.reference,
                      branches=args.branches)
    if args.output:
        files.write_json(args.output, report)
    if args.plot:
        plot(report, args.plot)
    if args.json:
        print_json(report)
        return 0
    rows = [("table (calibrated)", report), ("uncalibrated sum", report["uncalibrated"])]
    if "raw" in report:
        rows.append(("table, vs latencies as timed", report["raw"]))
    if "recalibrated" in report:
        rows.append((f"recalibrated now (x{report['calibration_now']['factor']:.3f})", report["recalibrated"]))
    print(table([[name, f"{r['within_10pct']:.1%}", f"{r['mape']:.2%}", f"{r['rmse_ms']:.2f}",
                  f"{r['spearman']:.4f}", f"{r['mean_signed_error']:+.2%}"] for name, r in rows],
                ["prediction", "within ±10%", "MAPE", "RMSE ms", "Spearman", "mean signed error"]))
    how = ("referred to the table's machine state through its reference network, timed in every round"
           if report["measured"] == "referred" else "as timed")
    print(f"{report['n']} random architectures, batch {report['batch']}, statistic {report['statistic']}; "
          f"measured latencies {how}")
    if "machine_vs_table" in report:
        from hwnas.profiling.reference import speed_words

        print(f"meanwhile the machine ran {speed_words(report['machine_vs_table'], 'when the table was built')} "
              f"(the reference network against the table's level)")
    return 0
