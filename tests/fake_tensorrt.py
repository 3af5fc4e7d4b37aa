"""A stand-in for the `tensorrt` module, for the builder's control flow on machines without TensorRT.

It implements only the calls hwnas's builder makes, records them, and decides like TensorRT
where hwnas depends on the verdict: a strongly typed network takes its types from the ONNX,
the FP16 flag makes the layers FP16, a timing cache from elsewhere is refused by
set_timing_cache; on TensorRT 11 every network is strongly typed and BuilderFlag has no FP16.
The calls themselves are checked against TensorRT's real bindings (test_tensorrt_bindings.py)
and stubs (test_tensorrt_types.py); this checks what hwnas does with the answers.
"""

from __future__ import annotations

import json
import types
from typing import Any

import onnx

CACHE_MAGIC = b"fake-cache:"


def make(version: str = "10.13.0") -> types.SimpleNamespace:
    major = int(version.split(".")[0])
    calls: dict[str, list[Any]] = {"loggers": [], "profiles": [], "flags": [], "network_flags": []}

    class Logger:
        WARNING = 2

        def __init__(self, severity: int) -> None:
            calls["loggers"].append(self)

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags, self.inputs, self.fp16 = flags, [], False

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> Any:
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network, self.num_errors = network, 0

        def parse(self, model: bytes) -> bool:
            graph = onnx.load_model_from_string(model).graph
            for i in graph.input:
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim]
                self.network.inputs.append(types.SimpleNamespace(name=i.name, shape=dims))
            self.network.fp16 = graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
            return True

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, Any] = {}

        def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
            self.shapes[name] = (list(lo), list(opt), list(hi))

    class Cache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return CACHE_MAGIC + b"updated"

    class Config:
        def __init__(self) -> None:
            self.flags, self.profiles, self.cache = set(), [], None
            self.profiling_verbosity = None

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            pass

        def set_flag(self, flag: str) -> None:
            self.flags.add(flag)
            calls["flags"].append(flag)

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            calls["profiles"].append(profile.shapes)
            return len(self.profiles) - 1

        def create_timing_cache(self, data: bytes) -> Cache:
            return Cache(data)

        def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> bool:
            if cache.data and not cache.data.startswith(CACHE_MAGIC):  # made by another TensorRT or GPU
                return False
            self.cache = cache
            return True

        def get_timing_cache(self) -> Cache | None:
            return self.cache

    class Builder:
        def __init__(self, logger: Logger) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            calls["network_flags"].append(flags)
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            if any(-1 in t.shape for t in network.inputs) and not config.profiles:
                return None  # TensorRT: a dynamic input needs an optimization profile
            strongly_typed = major >= 11 or network.flags  # TensorRT 11: always, whatever the flags
            half = network.fp16 if strongly_typed else "FP16" in config.flags
            return json.dumps({"half": bool(half)}).encode()

    class Inspector:
        def __init__(self, plan: bytes) -> None:
            self.half = json.loads(plan)["half"]

        def get_engine_information(self, fmt: Any) -> str:
            kind = "Row major linear FP16 format" if self.half else "Row major linear FP32 format"
            return json.dumps({"Layers": [{"Name": "conv", "LayerType": "CaskConvolution",
                                           "Outputs": [{"Name": "y", "Format/Datatype": kind}]}]})

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            pass

        def deserialize_cuda_engine(self, plan: bytes) -> Any:
            return types.SimpleNamespace(create_engine_inspector=lambda: Inspector(plan))

    return types.SimpleNamespace(
        __version__=version, calls=calls, Logger=Logger, Builder=Builder, OnnxParser=OnnxParser, Runtime=Runtime,
        # as in the real bindings: STRONGLY_TYPED is 1 on TensorRT 10 and 0 on 11, FP16 is a builder flag on 10 only
        Dims=list, NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=1 if major < 11 else 0),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"),
        BuilderFlag=types.SimpleNamespace(**({"FP16": "FP16"} if major < 11 else {})),
        ProfilingVerbosity=types.SimpleNamespace(DETAILED="detailed"),
        LayerInformationFormat=types.SimpleNamespace(JSON="json"))
