"""`hwnas bench`: time an architecture, an ONNX model or an engine the way trtexec does."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hwnas.cli.output import print_json, table
from hwnas.errors import HwnasError


def register(sub: Any) -> None:
    b = sub.add_parser(
        "bench", help="benchmark an architecture, ONNX model or TensorRT engine (trtexec-style)",
        description="Warm up for --warmup-ms, then time single inferences for at least --duration-s and "
                    "--iterations; report latency min/mean/median/p90/p95/p99/max, the coefficient of "
                    "variation (warning above 2.5%%) and throughput. TensorRT: GPU compute time from CUDA "
                    "events, CUDA graphs and no host transfers by default, as trtexec.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("target", metavar="ARCH|MODEL.onnx|ENGINE.plan")
    b.add_argument("--backend", choices=["ort", "torch", "tensorrt"], default="ort")
    b.add_argument("--batch", type=int, default=16)
    b.add_argument("--warmup-ms", type=float, default=200.0)
    b.add_argument("--duration-s", type=float, default=3.0)
    b.add_argument("--iterations", type=int, default=10, help="minimum number of timed iterations")
    b.add_argument("--threads", type=int, default=None, help="CPU threads (ort/torch; default 1)")
    b.add_argument("--fp16", action="store_true",
                   help="TensorRT/torch-CUDA: FP16 (TensorRT 11 needs an FP16 ONNX; the engine's own precision "
                        "is reported)")
    b.add_argument("--reparam", action="store_true", help="architectures: benchmark the re-parameterised export")
    b.add_argument("--no-cuda-graph", action="store_true", help="TensorRT: enqueue without CUDA graphs")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--table", help="also predict the latency with this table and report the error")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)


def _arch_from_onnx(path: Path) -> Any:
    import onnx

    from hwnas.spaces.catalog import builtin, catalog_from_dict

    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if "hwnas_arch" not in props:
        return None
    name = props.get("hwnas_arch_name", path.stem)
    return catalog_from_dict(json.loads(props["hwnas_arch"]), f"{path} metadata", builtin()).networks[name]


def cmd_bench(args: argparse.Namespace) -> int:
    from hwnas.bench.timing import benchmark

    target = Path(args.target)
    shape = None
    arch = None
    runner: Any
    engine_info: dict[str, Any] = {}
    if target.suffix in (".plan", ".engine"):
        if args.backend != "tensorrt":
            raise HwnasError("an engine runs on --backend tensorrt only")
        from hwnas.profiling.backends.tensorrt import (TensorRTRunner, engine_precision, inspector_json,
                                                       require_tensorrt)

        require_tensorrt()
        plan = target.read_bytes()
        engine_info = {"engine_precision": engine_precision(inspector_json(plan))["precision"]}
        runner = TensorRTRunner(plan, cuda_graph=not args.no_cuda_graph, batch=args.batch)
    elif target.suffix == ".onnx":
        if not target.is_file():
            raise HwnasError(f"no such file: {target}")
        arch = _arch_from_onnx(target)
        res = arch.macro.input if arch else 224
        shape = (args.batch, 3, res, res)
        runner = _onnx_runner(target.read_bytes(), shape, args, engine_info)
    else:
        from hwnas.export.onnx_export import seeded_network
        from hwnas.spaces import resolve_architecture

        arch = resolve_architecture(args.target)
        shape = (args.batch, 3, arch.macro.input, arch.macro.input)
        net = seeded_network(arch, args.seed)
        module: Any = net
        if args.reparam:
            from hwnas.export.reparam import reparameterize

            module = reparameterize(net)
        if args.backend == "torch":
            from hwnas.profiling.backends.torch_eager import TorchBackend

            runner = TorchBackend("fp16" if args.fp16 else "fp32", args.threads).load(module, [shape])
        else:
            import torch

            from hwnas.profiling.onnx_io import module_to_onnx

            half = False
            if args.backend == "tensorrt" and args.fp16:
                from hwnas.profiling.backends.tensorrt import fp16_onnx_for, require_tensorrt, trt_major

                require_tensorrt()
                half = fp16_onnx_for(trt_major())
            model = module_to_onnx(module, [shape], dtype=torch.float16 if half else torch.float32)
            runner = _onnx_runner(model, shape, args, engine_info)
    try:
        result = benchmark(runner, args.batch, args.warmup_ms, args.duration_s, args.iterations).summary()
    finally:
        runner.close()
    result = {"backend": args.backend, "target": args.target, **engine_info, **result}
    if args.table:
        if arch is None:
            raise HwnasError("--table needs an architecture: this target names none (no hwnas metadata)")
        from hwnas.profiling.predict import predict
        from hwnas.profiling.table import Table

        predicted = predict(Table.load(args.table), arch, args.batch)["latency_ms"]
        result["predicted_ms"] = predicted
        result["prediction_error"] = (predicted - result["latency_ms"]["median"]) / result["latency_ms"]["median"]
    if result["cov_warning"]:
        print(f"hwnas: warning: coefficient of variation {result['cov']:.1%} > 2.5%: the machine was busy or the "
              f"device unstable; these figures are noisy", file=sys.stderr)
    if args.json:
        print_json(result)
        return 0
    lat = result["latency_ms"]
    print(table([[f"{lat[k]:.3f}" for k in ("min", "mean", "median", "p90", "p95", "p99", "max")]],
                ["min ms", "mean", "median", "p90", "p95", "p99", "max"]))
    line = (f"{result['iterations']} iterations of batch {args.batch} on {args.backend}: throughput "
            f"{result['throughput_ips']:.1f} images/s, CoV {result['cov']:.2%}")
    if "predicted_ms" in result:
        line += f"; table predicts {result['predicted_ms']:.2f} ms ({result['prediction_error']:+.1%})"
    print(line)
    return 0


def _onnx_runner(model: bytes, shape: tuple[int, ...], args: argparse.Namespace, engine_info: dict[str, Any]) -> Any:
    if args.backend == "ort":
        from hwnas.profiling.backends.ort import OrtBackend

        return OrtBackend(threads=args.threads).load_onnx(model, [shape])
    if args.backend == "tensorrt":
        from hwnas.profiling.backends.tensorrt import (TensorRTRunner, check_precision, engine_from_onnx,
                                                       require_tensorrt)

        require_tensorrt()
        build = engine_from_onnx(model, fp16=args.fp16, batch=args.batch)
        check_precision(args.fp16, build.precision)
        engine_info.update(engine_precision=build.precision["precision"], engine_build=build.mode)
        return TensorRTRunner(build.plan, cuda_graph=not args.no_cuda_graph, batch=args.batch)
    raise HwnasError("the torch backend benchmarks architectures, not ONNX files")
