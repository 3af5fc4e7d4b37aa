"""TensorRT 10 and 11: ONNX -> engine per graph, timed with CUDA events on a torch stream.

Cannot run without an NVIDIA GPU and TensorRT's libraries; on machines without them the test
suite holds this module against the real Python bindings of TensorRT 10 and 11 (every use
resolved, and type-checked against stubs generated from them: tests/test_tensorrt_bindings.py)
and against the tensorrt-stubs package (tests/test_tensorrt_types.py).
`import tensorrt` sits inside the functions so importing hwnas never needs it, while mypy
still sees TensorRT's real types.

The builder follows NVIDIA's samples and Polygraphy's CreateConfig/EngineFromNetwork step
for step (one logger, explicit optimization profile, timing cache set with
ignore_mismatch=False), written out rather than called through Polygraphy: its loaders are
untyped, so the check against TensorRT's stubs would stop at them, and Polygraphy ignores
set_timing_cache's verdict, which hwnas must report.

- One process-wide trt.Logger (TensorRT keeps the first logger it is given).
- Precision (build_mode): TensorRT 11 networks are strongly typed (BuilderFlag.FP16 is gone, and
  the STRONGLY_TYPED network flag is deprecated and ignored, so none is passed): FP16 comes from
  an FP16 ONNX. TensorRT 10 builds FP32 ONNX with the FP16 builder flag, and an FP16 ONNX with
  the STRONGLY_TYPED flag. The calls that exist in one major only sit under `major < 11` /
  `major >= 11` guards, which the tests resolve against the real bindings of each major.
  The precision reported is the built engine's, read back from its inspector.
- ONNX with a dynamic batch gets one optimization profile (1, batch, batch).
- One timing cache is shared by all engines of a table (and saved beside it); a cache that
  does not match this TensorRT and GPU is refused, never silently replaced.
- Inputs and outputs live in torch CUDA tensors; no host transfers in the timed loop. Runs
  are replayed from CUDA graphs holding enough back-to-back runs that the host's enqueue
  cost stays hidden behind GPU work (gpu_timing).
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hwnas.errors import HwnasError
from hwnas.files import read_bytes, write_bytes
from hwnas.profiling.backends.base import Backend, Shape
from hwnas.profiling.device import gpu_fingerprint, software_versions
from hwnas.profiling.gpu_timing import TIMING_METHOD, GraphTimer
from hwnas.profiling.onnx_io import module_to_onnx
from hwnas.profiling.protocol import Runner

if TYPE_CHECKING:
    import tensorrt as trt

def dims_tuple(dims: trt.Dims) -> tuple[int, ...]:
    """TensorRT Dims as a tuple (Dims has __len__ and __getitem__, no __iter__)."""
    return tuple(dims[i] for i in range(len(dims)))


def trt_major() -> int:
    import tensorrt as trt

    return int(trt.__version__.split(".")[0])


@functools.cache
def trt_logger() -> trt.Logger:
    """The one logger of the process: TensorRT keeps the first one it is given."""
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


def require_tensorrt() -> None:
    """TensorRT with its libraries (not only its type stubs), and a GPU."""
    try:
        import tensorrt as trt
    except ImportError:
        raise HwnasError("the tensorrt backend needs TensorRT: pip install 'hwnas[gpu]' on a machine with an "
                         "NVIDIA GPU") from None
    if not hasattr(trt, "Builder"):
        raise HwnasError("'import tensorrt' found only type stubs, not TensorRT's libraries: "
                         "pip install 'hwnas[gpu]' on a machine with an NVIDIA GPU")
    if not torch.cuda.is_available():
        raise HwnasError("the tensorrt backend needs a CUDA GPU; torch.cuda.is_available() is False")


# --- decisions that need no GPU (tested on the CPU) -------------------------------------------

def build_mode(major: int, fp16: bool, onnx_fp16: bool) -> str:
    """How TensorRT `major` builds: 'strongly_typed' (the ONNX's dtypes decide), 'fp16_flag' or 'fp32'."""
    if major >= 11:
        if fp16 and not onnx_fp16:
            raise HwnasError("TensorRT 11 builds strongly typed networks, so an FP32 ONNX builds FP32: for FP16 "
                             "export the ONNX with FP16 weights (hwnas export onnx ARCH --fp16)")
        return "strongly_typed"
    if onnx_fp16:
        return "strongly_typed"
    return "fp16_flag" if fp16 else "fp32"


def fp16_onnx_for(major: int) -> bool:
    """Whether an FP16 engine needs an FP16 ONNX (TensorRT 11) or an FP32 one plus the flag (10)."""
    return major >= 11


def batch_profile(inputs: Sequence[tuple[str, tuple[int, ...]]], batch: int
                  ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shapes per input whose batch dimension is dynamic: (1, batch, batch).

    Empty when every shape is static. hwnas exports only the batch as dynamic; any other
    dynamic dimension is refused.
    """
    if batch < 1:
        raise HwnasError(f"--batch must be at least 1, got {batch}")
    profile = {}
    for name, shape in inputs:
        if all(d >= 0 for d in shape):
            continue
        if any(d < 0 for d in shape[1:]):
            raise HwnasError(f"ONNX input '{name}' has dynamic dimensions {list(shape)} other than the batch; "
                             "export it with a fixed shape (hwnas export onnx --batch N or --dynamic-batch)")
        rest = tuple(shape[1:])
        profile[name] = ((1, *rest), (batch, *rest), (batch, *rest))
    return profile


_DATATYPES = {"fp32": "fp32", "float": "fp32", "fp16": "fp16", "half": "fp16", "bf16": "bf16",
              "bfloat16": "bf16", "int8": "int8", "fp8": "fp8"}


def engine_precision(inspector: str) -> dict[str, Any]:
    """The compute precision of an engine from its inspector JSON (detailed profiling verbosity).

    Counts the data types of the outputs of every layer except reformats (which only
    convert between the I/O's types and the layers'). 'precision' is the one type found,
    'mixed' when several are, 'unknown' when the engine was built without detailed layers.
    The inspector writes "Row major linear FP16 format" with an execution context and
    "Half" without; both are read.
    """
    layers = json.loads(inspector).get("Layers", [])
    counts: Counter[str] = Counter()
    for layer in layers:
        if not isinstance(layer, dict) or str(layer.get("LayerType", "")).lower() == "reformat":
            continue
        for out in layer.get("Outputs", []):
            words = re.findall(r"[a-z0-9]+", str(out.get("Format/Datatype", "")).lower())
            types = {_DATATYPES[w] for w in words if w in _DATATYPES}
            counts.update(types)
    if not counts:
        return {"precision": "unknown", "layer_outputs": {}}
    return {"precision": next(iter(counts)) if len(counts) == 1 else "mixed", "layer_outputs": dict(counts)}


def check_precision(requested_fp16: bool, found: dict[str, Any]) -> None:
    """An FP16 request must have produced FP16 layers: never report a precision the engine lacks."""
    if requested_fp16 and found["precision"] != "unknown" and "fp16" not in found["layer_outputs"]:
        raise HwnasError(f"FP16 was requested but TensorRT built every layer in {found['precision']} "
                         f"({found['layer_outputs']}); the engine would be reported under a precision it lacks")


# --- building --------------------------------------------------------------------------------

@dataclass
class EngineBuild:
    plan: bytes
    timing_cache: bytes
    mode: str
    precision: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)


def engine_from_onnx(onnx_model: bytes, *, fp16: bool, batch: int = 16, workspace_gb: float = 4.0,
                     timing_cache: bytes | None = None, timing_cache_name: str = "the timing cache",
                     detailed_profile: bool = True) -> EngineBuild:
    """Serialized engine (and updated timing cache) from an ONNX model, TensorRT 10 or 11.

    batch: the opt and max batch of the optimization profile when the ONNX's batch is dynamic.
    """
    import tensorrt as trt

    logger = trt_logger()
    builder = trt.Builder(logger)
    major = trt_major()
    mode = build_mode(major, fp16, _is_fp16_onnx(onnx_model))
    flags = 0
    if major < 11 and mode == "strongly_typed":  # TensorRT 11 is always strongly typed (its flag: deprecated)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_model):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise HwnasError(f"TensorRT could not parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if major < 11 and mode == "fp16_flag":  # a weakly typed FP32 ONNX; TensorRT 11 has no BuilderFlag.FP16
        config.set_flag(trt.BuilderFlag.FP16)
    if detailed_profile:
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    shapes = batch_profile([(t.name, dims_tuple(t.shape)) for t in inputs], batch)
    if shapes:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
        config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache or b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise HwnasError(f"{timing_cache_name} was made by another TensorRT version or GPU and does not match "
                         "this one; it was left untouched: delete it or name another file")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise HwnasError("TensorRT failed to build the engine (see its log above)")
    plan = bytes(serialized)
    new_cache = config.get_timing_cache()
    precision = engine_precision(inspector_json(plan)) if detailed_profile else {"precision": "unknown"}
    return EngineBuild(plan, bytes(new_cache.serialize()) if new_cache is not None else b"", mode, precision,
                       {k: [list(s) for s in v] for k, v in shapes.items()})


def inspector_json(plan: bytes) -> str:
    """Per-layer engine information (rich when built with detailed profiling verbosity)."""
    import tensorrt as trt

    engine = trt.Runtime(trt_logger()).deserialize_cuda_engine(plan)
    if engine is None:
        raise HwnasError("TensorRT could not deserialize the engine (built by another TensorRT version "
                         "or for another GPU?)")
    inspector = engine.create_engine_inspector()
    if inspector is None:
        raise HwnasError("TensorRT could not create an engine inspector")
    return str(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def _is_fp16_onnx(onnx_model: bytes) -> bool:
    import onnx

    model = onnx.load_model_from_string(onnx_model)
    return any(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for i in model.graph.input)


def _torch_dtype(dtype: Any) -> torch.dtype:
    import tensorrt as trt

    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
             trt.DataType.BF16: torch.bfloat16, trt.DataType.INT32: torch.int32,
             trt.DataType.INT64: torch.int64, trt.DataType.INT8: torch.int8, trt.DataType.BOOL: torch.bool}
    if dtype not in table:
        raise HwnasError(f"engine tensor of TensorRT type {dtype} has no torch equivalent")
    return table[dtype]


# --- running ---------------------------------------------------------------------------------

def input_shape(name: str, shape: tuple[int, ...], profile: Sequence[tuple[int, ...]] | None,
                batch: int | None) -> tuple[int, ...]:
    """The concrete shape of an engine input: static, or the profile's opt shape at `batch`."""
    if all(d >= 0 for d in shape):
        return shape
    if profile is None:
        raise HwnasError(f"engine input '{name}' has dynamic shape {list(shape)} and no optimization profile")
    lo, opt, hi = profile
    if batch is None:
        return opt
    if not lo[0] <= batch <= hi[0]:
        raise HwnasError(f"batch {batch} is outside the engine's optimization profile ({lo[0]}..{hi[0]}) for "
                         f"input '{name}'; rebuild the engine with hwnas export engine --batch {batch}")
    return (batch, *opt[1:])


class TensorRTRunner(Runner):
    """An engine with its I/O in torch CUDA tensors; runs with execute_async_v3 on a torch stream.

    Timed by gpu_timing.GraphTimer: with cuda_graph, replays of a CUDA graph holding enough
    back-to-back runs to hide the host's enqueue cost (TensorRT needs one run before capture:
    the timer's warm-up runs do it).
    """

    def __init__(self, plan: bytes, inputs: Sequence[torch.Tensor] | None = None, cuda_graph: bool = False,
                 batch: int | None = None):
        import tensorrt as trt

        self.runtime = trt.Runtime(trt_logger())
        engine = self.runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise HwnasError("TensorRT could not deserialize the engine (built by another TensorRT version "
                             "or for another GPU?)")
        self.engine = engine
        context = engine.create_execution_context()
        if context is None:
            raise HwnasError("TensorRT could not create an execution context")
        self.context = context
        self.stream = torch.cuda.Stream()
        self.tensors: dict[str, torch.Tensor] = {}
        given = list(inputs or [])
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        outputs = []
        for name in names:  # every input shape is set before any output shape is asked for
            if engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
                outputs.append(name)
                continue
            dtype = _torch_dtype(engine.get_tensor_dtype(name))
            shape = dims_tuple(engine.get_tensor_shape(name))
            if given:
                tensor = given.pop(0).to("cuda", dtype)
            else:
                profile = None
                if any(d < 0 for d in shape):
                    profile = [dims_tuple(d) for d in engine.get_tensor_profile_shape(name, 0)]
                tensor = torch.randn(input_shape(name, shape, profile, batch), device="cuda").to(dtype)
            if any(d < 0 for d in shape) and not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise HwnasError(f"input '{name}' of shape {list(tensor.shape)} is outside the engine's profile")
            self.tensors[name] = tensor.contiguous()
        for name in outputs:
            out_shape = dims_tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in out_shape):
                raise HwnasError(f"engine output '{name}' has unresolved shape {list(out_shape)}")
            self.tensors[name] = torch.empty(out_shape, device="cuda", dtype=_torch_dtype(engine.get_tensor_dtype(name)))
        for name, tensor in self.tensors.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        self.timer = GraphTimer(self._enqueue, self.stream, cuda_graph)

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise HwnasError("TensorRT execute_async_v3 failed")

    def run(self, iterations: int) -> float:
        return self.timer.run(iterations)

    def outputs(self) -> dict[str, torch.Tensor]:
        import tensorrt as trt

        return {n: t for n, t in self.tensors.items() if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT}

    def close(self) -> None:
        self.timer.close()
        del self.context, self.engine
        self.tensors.clear()


class TensorRTBackend(Backend):
    name = "tensorrt"
    precisions = ("fp32", "fp16")

    def __init__(self, precision: str = "fp32", threads: int | None = None, workspace_gb: float = 4.0,
                 timing_cache: str | None = None):
        super().__init__(precision, None)
        require_tensorrt()
        self.workspace_gb = workspace_gb
        self.timing_cache_path = Path(timing_cache) if timing_cache else None
        self.timing_cache = read_bytes(self.timing_cache_path, "timing cache") if self.timing_cache_path and \
            self.timing_cache_path.exists() else b""
        self.engine_precisions: Counter[str] = Counter()

    def describe(self) -> dict[str, Any]:
        import tensorrt as trt

        return {"name": self.name, "version": trt.__version__, "precision": self.precision, "threads": None,
                "build": "strongly typed FP16 ONNX" if self.precision == "fp16" and fp16_onnx_for(trt_major())
                else ("FP32 ONNX with the FP16 builder flag" if self.precision == "fp16" else "FP32 ONNX"),
                "timing": TIMING_METHOD,
                "device": gpu_fingerprint(torch.cuda.current_device()), "software": software_versions("tensorrt")}

    def onnx_for(self, module: nn.Module, input_shapes: Sequence[Shape]) -> bytes:
        half = self.precision == "fp16" and fp16_onnx_for(trt_major())
        return module_to_onnx(module, input_shapes, dtype=torch.float16 if half else torch.float32)

    def load(self, module: nn.Module, input_shapes: Sequence[Shape]) -> Runner:
        build = engine_from_onnx(self.onnx_for(module, input_shapes), fp16=self.precision == "fp16",
                                 workspace_gb=self.workspace_gb, timing_cache=self.timing_cache,
                                 timing_cache_name=f"timing cache {self.timing_cache_path}")
        self.timing_cache = build.timing_cache  # shared across all engines of the table
        if self.timing_cache_path:
            write_bytes(self.timing_cache_path, self.timing_cache)
        found = build.precision.get("precision", "unknown")
        self.engine_precisions[found] += 1
        if found not in (self.precision, "unknown") and self.engine_precisions[found] == 1:
            print(f"hwnas: warning: TensorRT built an engine of this table in {found} "
                  f"({build.precision.get('layer_outputs')}) although {self.precision} was asked for",
                  file=sys.stderr)
        return TensorRTRunner(build.plan, cuda_graph=True)
