"""`hwnas export engine`: ONNX -> TensorRT plan, with the engine inspector's JSON beside it.

Shares the builder code with the TensorRT profiling backend (engine_from_onnx). Runs only
where TensorRT and a GPU exist; CI type-checks it against the TensorRT stubs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hwnas.files import read_bytes, write_bytes, write_text
from hwnas.profiling.backends.tensorrt import check_precision, engine_from_onnx, inspector_json, require_tensorrt


def export_engine(onnx_path: str | Path, out: str | Path, fp16: bool = False, workspace_gb: float = 4.0,
                  timing_cache: str | Path | None = None, batch: int = 16) -> dict[str, Any]:
    """Build the plan (and PLAN.json, the inspector's view); batch sizes a dynamic-batch ONNX's profile."""
    require_tensorrt()
    onnx_path, out = Path(onnx_path), Path(out)
    model = read_bytes(onnx_path, "ONNX model")
    cache_path = Path(timing_cache) if timing_cache else None
    cache = read_bytes(cache_path, "timing cache") if cache_path and cache_path.exists() else None
    build = engine_from_onnx(model, fp16=fp16, batch=batch, workspace_gb=workspace_gb, timing_cache=cache,
                             timing_cache_name=f"timing cache {cache_path}")
    check_precision(fp16, build.precision)
    info = out.with_suffix(out.suffix + ".json")
    inspector = inspector_json(build.plan)  # before writing anything: a failure leaves no output
    # Each file whole or not at all; the plan last, so that a plan on disk has its inspector JSON.
    write_text(info, inspector)
    if cache_path:
        write_bytes(cache_path, build.timing_cache)
    write_bytes(out, build.plan)
    return {"plan": str(out), "inspector": str(info), "timing_cache": str(cache_path) if cache_path else "",
            "build": build.mode, "precision": build.precision["precision"],
            "layer_outputs": build.precision.get("layer_outputs", {}), "profile": build.profile}
