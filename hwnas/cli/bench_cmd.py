"""`hwnas bench`: time an architecture, an ONNX model or an engine the way trtexec does."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hwnas.cli import options as opt
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
    opt.add_batch(b)
    opt.add_number(b, "--warmup-ms", rng=opt.MILLISECONDS, default=200.0, help="warm-up time")
    opt.add_number(b, "--duration-s", rng=opt.SECONDS, default=3.0, help="minimum timed duration")
    opt.add_number(b, "--iterations", rng=opt.ITERATIONS, default=10, help="minimum number of timed iterations")
    opt.add_threads(b, help="CPU threads (ort/torch; default 1)")
    opt.add_fp16(b, help="TensorRT/torch-CUDA: FP16 (TensorRT 11 needs an FP16 ONNX; the engine's own precision "
                         "is reported)")
    b.add_argument("--reparam", action="store_true", help="architectures: benchmark the re-parameterised export")
    b.add_argument("--no-cuda-graph", action="store_true", help="TensorRT: enqueue without CUDA graphs")
    opt.add_seed(b, help="seed of an architecture's weights")
    b.add_argument("--table", help="also predict the latency with this table and report the error")
    opt.add_json(b)
    opt.add_quiet(b)
    b.set_defaults(func=cmd_bench)


def _read_onnx(path: Path) -> tuple[bytes, Any]:
    """The model's bytes and its hwnas architecture (None without hwnas metadata); a file that
    is not an ONNX model is a one-line error."""
    import onnx

    from hwnas.files import read_bytes
    from hwnas.spaces.catalog import builtin, catalog_from_dict

    data = read_bytes(path, "ONNX model")
    try:
        model = onnx.load_model_from_string(data)
        if not model.graph.node:
            raise ValueError("no graph")
    except Exception as exc:  # noqa: BLE001 - protobuf raises several kinds for bytes that are not a model
        raise HwnasError(f"{path} is not an ONNX model ({type(exc).__name__}); give a file written by "
                         f"'hwnas export onnx' or another ONNX exporter") from None
    props = {p.key: p.value for p in model.metadata_props}
    if "hwnas_arch" not in props:
        return data, None
    name = props.get("hwnas_arch_name", path.stem)
    try:
        document = json.loads(props["hwnas_arch"])
    except json.JSONDecodeError:
        raise HwnasError(f"{path}: its hwnas_arch metadata is not valid JSON") from None
    networks = catalog_from_dict(document, f"{path} metadata", builtin()).networks
    if name not in networks:
        raise HwnasError(f"{path}: its metadata names architecture {name!r}, which it does not define")
    return data, networks[name]


def _fixed_batch(data: bytes) -> int | None:
    """The batch an ONNX model's first input is fixed to, or None when symbolic."""
    import onnx

    dims = onnx.load_model_from_string(data).graph.input[0].type.tensor_type.shape.dim
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") else None


def cmd_bench(args: argparse.Namespace) -> int:
    from hwnas.bench.timing import benchmark

    target = Path(args.target)
    lut = _load_table(args.table) if args.table else None  # a bad table is refused before any timing
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
        from hwnas.files import read_bytes

        plan = read_bytes(target, "engine")
        engine_info = {"engine_precision": engine_precision(inspector_json(plan))["precision"]}
        runner = TensorRTRunner(plan, cuda_graph=not args.no_cuda_graph, batch=args.batch)
    elif target.suffix == ".onnx":
        if args.backend == "torch":
            raise HwnasError("the torch backend benchmarks architectures, not ONNX files: use --backend ort "
                             "or tensorrt")
        data, arch = _read_onnx(target)
        fixed = _fixed_batch(data)
        if fixed and fixed != args.batch:
            raise HwnasError(f"{target} has a fixed batch of {fixed}: pass --batch {fixed}, or export it with "
                             f"--dynamic-batch")
        res = arch.macro.input if arch else 224
        shape = (args.batch, 3, res, res)
        try:
            runner = _onnx_runner(data, shape, args, engine_info)
        except HwnasError:
            raise
        except Exception as exc:  # noqa: BLE001 - the runtime refuses a model it cannot run
            raise HwnasError(f"{args.backend} cannot run {target}: {' '.join(str(exc).split())[:200]}") from None
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
        predicted = None
        if lut is not None:
            if arch is None:
                raise HwnasError("--table needs an architecture: this target names none (no hwnas metadata)")
            from hwnas.profiling.predict import predict

            predicted = predict(lut, arch, args.batch)["latency_ms"]
        result = benchmark(runner, args.batch, args.warmup_ms, args.duration_s, args.iterations,
                           progress=not args.quiet).summary()
    finally:
        runner.close()
    result = {"backend": args.backend, "target": args.target, **engine_info, **result}
    if predicted is not None:
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


def _load_table(path: str) -> Any:
    from hwnas.profiling.table import Table

    table = Table.load(path)
    if not table.has_latency:
        raise HwnasError(f"--table {path} prices MACs and params only (backend none): give a table with "
                         f"latencies to compare with")
    return table


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
