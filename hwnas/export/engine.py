"""`hwnas export engine`: ONNX -> TensorRT plan, with the engine inspector's JSON beside it.

Shares the builder code with the TensorRT profiling backend (engine_from_onnx). Runs only
where TensorRT and a GPU exist; CI type-checks it against the TensorRT stubs.
"""

from __future__ import annotations

from pathlib import Path

from hwnas.errors import HwnasError
from hwnas.profiling.backends.tensorrt import engine_from_onnx, require_tensorrt, trt_major


def inspector_json(plan: bytes) -> str:
    """Per-layer engine information (built with detailed profiling verbosity)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise HwnasError("TensorRT could not deserialize the engine it just built")
    inspector = engine.create_engine_inspector()
    if inspector is None:
        raise HwnasError("TensorRT could not create an engine inspector")
    return str(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def export_engine(onnx_path: str | Path, out: str | Path, fp16: bool = False, workspace_gb: float = 4.0,
                  timing_cache: str | Path | None = None) -> dict[str, str]:
    require_tensorrt()
    onnx_path, out = Path(onnx_path), Path(out)
    model = onnx_path.read_bytes()
    if fp16 and trt_major() >= 11:
        from hwnas.profiling.backends.tensorrt import _is_fp16_onnx

        if not _is_fp16_onnx(model):
            raise HwnasError("TensorRT 11 builds strongly typed networks: FP16 needs an FP16 ONNX "
                             "(hwnas export onnx ARCH --fp16)")
    cache_path = Path(timing_cache) if timing_cache else None
    cache = cache_path.read_bytes() if cache_path and cache_path.exists() else None
    build = engine_from_onnx(model, fp16=fp16, workspace_gb=workspace_gb, timing_cache=cache)
    out.write_bytes(build.plan)
    if cache_path:
        cache_path.write_bytes(build.timing_cache)
    info = out.with_suffix(out.suffix + ".json")
    info.write_text(inspector_json(build.plan))
    return {"plan": str(out), "inspector": str(info), "timing_cache": str(cache_path) if cache_path else ""}
