"""`hwnas export onnx|engine`."""

from __future__ import annotations

import argparse
from typing import Any

from hwnas.cli import options as opt
from hwnas.cli.output import print_json


def register(sub: Any) -> None:
    exp = sub.add_parser("export", help="export an architecture to ONNX or an ONNX model to a TensorRT engine",
                         description="Export: an architecture to a verified ONNX model; ONNX to a TensorRT plan.")
    esub = exp.add_subparsers(dest="export_command", metavar="FORMAT", parser_class=type(exp))
    esub.required = True
    onnx = esub.add_parser(
        "onnx", help="architecture -> ONNX, verified against PyTorch with onnxruntime",
        description="Export an architecture (BN in eval mode) to one self-contained ONNX file, then run it "
                    "with onnxruntime and refuse the export if it differs from PyTorch. Weights are "
                    "deterministic from --seed unless --weights gives a checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    onnx.add_argument("arch", metavar="NAME|FILE", help="architecture: built-in name, file, or FILE:NAME")
    onnx.add_argument("-o", "--output", required=True, help="ONNX file to write")
    batch = onnx.add_mutually_exclusive_group()
    opt.add_batch(batch, help="fixed batch size")
    batch.add_argument("--dynamic-batch", action="store_true", help="a symbolic batch dimension")
    onnx.add_argument("--reparam", action="store_true",
                      help="re-parameterise the multi-branch cells for inference (BN folded, branches merged)")
    onnx.add_argument("--merge", choices=["auto", "padded", "grouped"], default="auto",
                      help="how --reparam merges depthwise convs of different kernel sizes")
    opt.add_fp16(onnx, help="FP16 weights and I/O (for TensorRT 11's strong typing)")
    opt.add_seed(onnx, help="seed of the weights when no checkpoint is given")
    onnx.add_argument("--weights", metavar="CKPT", help="a PyTorch state_dict checkpoint of the network")
    opt.add_json(onnx, help="print the export report as JSON")
    opt.add_quiet(onnx)
    onnx.set_defaults(func=cmd_onnx)

    eng = esub.add_parser(
        "engine", help="ONNX -> TensorRT engine (needs TensorRT and a GPU)",
        description="Build a TensorRT 10/11 engine from an ONNX model; the engine inspector's JSON is saved "
                    "beside the plan (PLAN.json) and the precision reported is the one the engine's layers have. "
                    "TensorRT 11 is strongly typed: for FP16 export the ONNX with --fp16 (an FP32 ONNX builds "
                    "FP32 there); TensorRT 10 builds FP16 from an FP32 ONNX with its FP16 flag. An ONNX with "
                    "a dynamic batch gets the optimization profile min 1, opt and max --batch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    eng.add_argument("onnx", help="ONNX model")
    eng.add_argument("-o", "--output", required=True, help="plan file to write")
    opt.add_fp16(eng, help="FP16 engine (refused if TensorRT builds no FP16 layer)")
    opt.add_batch(eng, 16, help="dynamic-batch ONNX: the optimization profile's opt and max batch (min 1)")
    opt.add_number(eng, "--workspace", rng=opt.WORKSPACE_GB, default=4.0, metavar="GB", help="builder workspace limit")
    eng.add_argument("--timing-cache", metavar="FILE",
                     help="timing cache to read and update (one made by another TensorRT or GPU is refused)")
    opt.add_json(eng)
    eng.set_defaults(func=cmd_engine)


def cmd_onnx(args: argparse.Namespace) -> int:
    from hwnas.export.onnx_export import export_onnx
    from hwnas.files import check_writable
    from hwnas.spaces import resolve_architecture

    arch = resolve_architecture(args.arch)
    check_writable(args.output, "ONNX output")  # before the export and its verification
    report = export_onnx(arch, args.output, args.batch, args.dynamic_batch, args.reparam,
                         args.fp16, args.seed, args.weights, args.merge, progress=not args.quiet)
    if args.json:
        print_json(report.to_dict())
    else:
        print(f"wrote {report.path}: {report.nodes} nodes, batch {report.batch}, {report.precision}"
              f"{', re-parameterised' if report.reparam else ''}; onnxruntime vs PyTorch: max abs error "
              f"{report.max_abs_error:.3g}, max rel error {report.max_rel_error:.3g}")
    return 0


def cmd_engine(args: argparse.Namespace) -> int:
    from hwnas.export.engine import export_engine
    from hwnas.files import check_writable

    check_writable(args.output, "engine output")  # before a build that can take minutes
    if args.timing_cache:
        check_writable(args.timing_cache, "timing cache")
    result = export_engine(args.onnx, args.output, args.fp16, args.workspace, args.timing_cache, args.batch)
    if args.json:
        print_json(result)
    else:
        print(f"wrote {result['plan']}: {result['precision']} engine ({result['build']}; layer outputs "
              f"{result['layer_outputs']}), inspector: {result['inspector']}")
    return 0
