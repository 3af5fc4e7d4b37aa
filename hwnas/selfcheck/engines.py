"""TensorRT, where installed: a tiny conv-BN-ReLU network through hwnas's own engine export.

The network is exported to ONNX as tables and `hwnas export onnx` export it, built into an engine
by hwnas/export/engine.py (the tensorrt backend's builder), run with the backend's runner, and its
output compared with onnxruntime's on the FP32 ONNX. The engine's precision is read back from its
inspector (an FP32 engine must be FP32; an FP16 one must have FP16 layers), and the timing cache
makes a round trip: the FP32 engine is built twice, the second time from the cache file the
first build wrote, which TensorRT must accept.

Tolerance: TensorRT builds FP32 layers with TF32 by default and FP16 layers may accumulate in
FP16; both keep 10-bit mantissas, and the reference takes the unrounded inputs. The engine's
output must be within ENGINE_ROUNDINGS fp16 roundings of |ref| + max|ref|: an engine with a wrong
layer is off by the order of the output itself.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from hwnas.selfcheck.tolerance import Comparison, compare

SHAPE = (2, 8, 16, 16)
ENGINE_ROUNDINGS = 32.0


def tiny_network() -> nn.Module:
    """conv 3x3 (8 -> 16) + BN + ReLU, with BN statistics and parameters that are not the defaults."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        bn = nn.BatchNorm2d(16)
        net = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False), bn, nn.ReLU())
        with torch.no_grad():
            assert bn.running_mean is not None and bn.running_var is not None
            bn.running_mean.normal_(0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0, 0.5)
    return net.eval()


def onnxruntime_output(model: bytes, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(out)


def engine_output(plan: Path, x: torch.Tensor) -> torch.Tensor:
    from hwnas.profiling.backends.tensorrt import TensorRTRunner

    runner = TensorRTRunner(plan.read_bytes(), inputs=[x])  # runs it (warm-up) and waits
    try:
        return next(iter(runner.outputs().values())).float().cpu()
    finally:
        runner.close()


def check_engine(precision: str, folder: Path) -> list[Comparison]:
    from hwnas.export.engine import export_engine
    from hwnas.files import write_bytes
    from hwnas.profiling.backends.tensorrt import fp16_onnx_for, require_tensorrt, trt_major
    from hwnas.profiling.onnx_io import module_to_onnx

    require_tensorrt()
    fp16 = precision == "fp16"
    net = tiny_network()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    fp32_onnx = module_to_onnx(copy.deepcopy(net), [SHAPE])
    expected = onnxruntime_output(fp32_onnx, x)
    half_onnx = fp16 and fp16_onnx_for(trt_major())  # TensorRT 11: FP16 from an FP16 ONNX
    onnx = folder / f"tiny_{precision}.onnx"
    write_bytes(onnx, module_to_onnx(copy.deepcopy(net), [SHAPE], dtype=torch.float16) if half_onnx else fp32_onnx)
    cache = folder / f"timing_{precision}.cache"
    builds = [export_engine(onnx, folder / f"tiny_{precision}.plan", fp16=fp16, timing_cache=cache, batch=SHAPE[0])]
    found = []
    if not fp16:  # the round trip: a second build reads the cache the first one wrote
        written = cache.stat().st_size if cache.exists() else 0
        builds.append(export_engine(onnx, folder / "tiny_fp32_cached.plan", timing_cache=cache, batch=SHAPE[0]))
        found.append(Comparison(f"timing cache written ({written} bytes), read back and accepted by a second build",
                                0.0 if written > 0 else float("inf"), 0.0, 1, 0, "accepted"))
    for build in builds:
        got = engine_output(Path(build["plan"]), x)
        found.append(compare(f"{Path(build['plan']).name} output vs onnxruntime", got, expected, torch.float16,
                             roundings=ENGINE_ROUNDINGS))
        layers = build["layer_outputs"]
        right = "fp16" in layers if fp16 else build["precision"] == "fp32"
        found.append(Comparison(f"{Path(build['plan']).name} precision read back: {build['precision']} {layers}",
                                0.0 if right else float("inf"), 0.0, 1, 0,
                                "FP16 layers" if fp16 else "every layer FP32"))
    return found
