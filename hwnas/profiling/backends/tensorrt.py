"""TensorRT 10 and 11: ONNX -> engine per graph, timed with CUDA events on a torch stream.

Cannot run without an NVIDIA GPU and TensorRT's libraries; on machines without them this
module is type-checked against the TensorRT stubs by the test suite (tests/test_tensorrt_types.py).
`import tensorrt` sits inside the functions so importing hwnas never needs it, while mypy
still sees TensorRT's real types.

- TensorRT 11 networks are strongly typed (BuilderFlag.FP16 is gone): FP16 comes from an
  FP16 ONNX. TensorRT 10 builds FP32 ONNX with the FP16 builder flag.
- One timing cache is shared by all engines of a table (and saved beside it).
- Inputs and outputs live in torch CUDA tensors; no host transfers in the timed loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hwnas.errors import HwnasError
from hwnas.profiling.backends.base import Backend, Shape
from hwnas.profiling.device import gpu_fingerprint, software_versions
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


@dataclass
class EngineBuild:
    plan: bytes
    timing_cache: bytes


def engine_from_onnx(onnx_model: bytes, *, fp16: bool, workspace_gb: float = 4.0,
                     timing_cache: bytes | None = None, detailed_profile: bool = True) -> EngineBuild:
    """Serialized engine (and updated timing cache) from an ONNX model, TensorRT 10 or 11."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = trt_major()
    flags = 0
    if major >= 11 or (fp16 and _is_fp16_onnx(onnx_model)):
        # Strongly typed: the ONNX's own dtypes decide (TensorRT 11 has no other mode).
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_model):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise HwnasError(f"TensorRT could not parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16 and not flags:
        config.set_flag(trt.BuilderFlag.FP16)  # TensorRT 10, weakly typed FP32 ONNX
    if detailed_profile:
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    cache = config.create_timing_cache(timing_cache or b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise HwnasError("TensorRT failed to build the engine (see its log above)")
    new_cache = config.get_timing_cache()
    return EngineBuild(bytes(serialized), bytes(new_cache.serialize()) if new_cache is not None else b"")


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
        raise HwnasError(f"engine tensor of TensorRT type {dtype} has no torch equivalent here")
    return table[dtype]


class TensorRTRunner(Runner):
    """An engine with its I/O in torch CUDA tensors; runs with execute_async_v3 on a torch stream."""

    def __init__(self, plan: bytes, inputs: Sequence[torch.Tensor] | None = None, cuda_graph: bool = False):
        import tensorrt as trt

        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
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
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = dims_tuple(engine.get_tensor_shape(name))
            dtype = _torch_dtype(engine.get_tensor_dtype(name))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                tensor = given.pop(0).to("cuda", dtype) if given else torch.randn(shape, device="cuda").to(dtype)
                if any(d < 0 for d in shape):
                    self.context.set_input_shape(name, tuple(tensor.shape))
            else:
                tensor = torch.empty(dims_tuple(self.context.get_tensor_shape(name)), device="cuda", dtype=dtype)
            self.tensors[name] = tensor.contiguous()
            self.context.set_tensor_address(name, self.tensors[name].data_ptr())
        self.graph: torch.cuda.CUDAGraph | None = None
        if cuda_graph:
            self._capture()

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise HwnasError("TensorRT execute_async_v3 failed")

    def _capture(self) -> None:
        self._enqueue()  # TensorRT needs one run before capture (shape-dependent setup)
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            self._enqueue()
        self.graph = graph

    def run(self, iterations: int) -> float:
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(self.stream):
            begin.record(self.stream)
            for _ in range(iterations):
                if self.graph is not None:
                    self.graph.replay()
                else:
                    self._enqueue()
            end.record(self.stream)
        end.synchronize()
        return float(begin.elapsed_time(end))

    def outputs(self) -> dict[str, torch.Tensor]:
        import tensorrt as trt

        return {n: t for n, t in self.tensors.items() if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT}

    def close(self) -> None:
        self.graph = None
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
        self.timing_cache = self.timing_cache_path.read_bytes() if self.timing_cache_path and \
            self.timing_cache_path.exists() else b""

    def describe(self) -> dict[str, Any]:
        import tensorrt as trt

        return {"name": self.name, "version": trt.__version__, "precision": self.precision, "threads": None,
                "timing": "CUDA events around execute_async_v3 on a torch stream",
                "device": gpu_fingerprint(torch.cuda.current_device()), "software": software_versions("tensorrt")}

    def onnx_for(self, module: nn.Module, input_shapes: Sequence[Shape]) -> bytes:
        # TensorRT 11 is strongly typed: FP16 must be in the ONNX itself.
        half = self.precision == "fp16" and trt_major() >= 11
        return module_to_onnx(module, input_shapes, dtype=torch.float16 if half else torch.float32)

    def load(self, module: nn.Module, input_shapes: Sequence[Shape]) -> Runner:
        build = engine_from_onnx(self.onnx_for(module, input_shapes), fp16=self.precision == "fp16",
                                 workspace_gb=self.workspace_gb, timing_cache=self.timing_cache)
        self.timing_cache = build.timing_cache  # shared across all engines of the table
        if self.timing_cache_path:
            self.timing_cache_path.write_bytes(self.timing_cache)
        return TensorRTRunner(build.plan)
