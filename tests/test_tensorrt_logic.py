"""The TensorRT backend's decisions that need no GPU: build mode per version, the dynamic-batch
profile, the precision read back from the inspector, CUDA-graph sizing. (The calls into
TensorRT itself are type-checked in test_tensorrt_types.py; they cannot run without a GPU.)"""

from __future__ import annotations

import json
import sys

import onnx
import pytest

from hwnas.errors import HwnasError
from hwnas.export.onnx_export import export_onnx
from hwnas.profiling.backends.tensorrt import (batch_profile, build_mode, check_precision, engine_precision,
                                              input_shape)
from hwnas.profiling.gpu_timing import GRAPH_MIN_MS, MAX_RUNS_PER_GRAPH, graph_runs
from hwnas.spaces import resolve_architecture

from conftest import REPO


def test_build_mode_per_tensorrt_version():
    assert build_mode(10, fp16=True, onnx_fp16=False) == "fp16_flag"
    assert build_mode(10, fp16=False, onnx_fp16=False) == "fp32"
    assert build_mode(10, fp16=True, onnx_fp16=True) == "strongly_typed"
    assert build_mode(11, fp16=True, onnx_fp16=True) == "strongly_typed"
    assert build_mode(11, fp16=False, onnx_fp16=False) == "strongly_typed"  # an FP32 ONNX builds FP32
    with pytest.raises(HwnasError, match="--fp16"):  # never a silent FP32 build under an FP16 request
        build_mode(11, fp16=True, onnx_fp16=False)


def onnx_inputs(path):
    """(name, shape) of the graph inputs, -1 for a symbolic dimension, as TensorRT's parser reports them."""
    model = onnx.load(str(path))
    return [(i.name, tuple(d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim))
            for i in model.graph.input]


def test_dynamic_batch_onnx_gets_a_profile(tmp_path):
    arch = resolve_architecture(str(REPO / "tests" / "data" / "tiny.json"))
    export_onnx(arch, tmp_path / "dyn.onnx", dynamic_batch=True)
    export_onnx(arch, tmp_path / "fixed.onnx", batch=4)
    dynamic = onnx_inputs(tmp_path / "dyn.onnx")
    assert dynamic[0][1][0] == -1
    profile = batch_profile(dynamic, 16)
    assert profile == {dynamic[0][0]: ((1, 3, 32, 32), (16, 3, 32, 32), (16, 3, 32, 32))}
    assert batch_profile(onnx_inputs(tmp_path / "fixed.onnx"), 16) == {}
    with pytest.raises(HwnasError, match="other than the batch"):
        batch_profile([("input", (-1, 3, -1, 32))], 16)


def test_runner_shapes_never_have_negative_dims():
    profile = [(1, 3, 8, 8), (16, 3, 8, 8), (16, 3, 8, 8)]
    assert input_shape("x", (-1, 3, 8, 8), profile, None) == (16, 3, 8, 8)
    assert input_shape("x", (-1, 3, 8, 8), profile, 4) == (4, 3, 8, 8)
    assert input_shape("x", (2, 3, 8, 8), None, None) == (2, 3, 8, 8)
    with pytest.raises(HwnasError, match="outside the engine's optimization profile"):
        input_shape("x", (-1, 3, 8, 8), profile, 32)
    with pytest.raises(HwnasError, match="no optimization profile"):
        input_shape("x", (-1, 3, 8, 8), None, 4)


def inspector(*layers):
    return json.dumps({"Layers": list(layers), "Bindings": ["input", "output"]})


def layer(kind, *datatypes):
    return {"Name": kind, "LayerType": kind, "Outputs": [{"Name": "t", "Format/Datatype": d} for d in datatypes]}


def test_precision_is_read_back_from_the_inspector():
    # TensorRT 10 with the FP16 flag: FP32 I/O reformatted to FP16 layers.
    fp16_flag = inspector(layer("Reformat", "Row major linear FP16 format"),
                          layer("CaskConvolution", "Channel major FP16 format where channel % 8 == 0"),
                          layer("CaskPooling", "Row major linear FP16 format"),
                          layer("Reformat", "Row major linear FP32 format"))
    assert engine_precision(fp16_flag) == {"precision": "fp16", "layer_outputs": {"fp16": 2}}
    # Without an execution context the inspector writes the short names.
    short = inspector(layer("CaskConvolution", "Float"), layer("CaskGemm", "Half"))
    assert engine_precision(short) == {"precision": "mixed", "layer_outputs": {"fp32": 1, "fp16": 1}}
    fp32 = inspector(layer("CaskConvolution", "Row major linear FP32 format"))
    assert engine_precision(fp32)["precision"] == "fp32"
    assert engine_precision(json.dumps({"Layers": ["conv1", "relu1"]}))["precision"] == "unknown"  # not detailed
    assert engine_precision(inspector(layer("CaskConvolution", "Row major linear BFloat16 format")))[
        "precision"] == "bf16"
    with pytest.raises(HwnasError, match="FP16 was requested"):
        check_precision(True, engine_precision(fp32))
    check_precision(True, engine_precision(short))  # FP16 layers are there
    check_precision(False, engine_precision(fp32))


def test_graph_holds_enough_runs_to_hide_enqueue_cost():
    assert graph_runs(0.004) * 0.004 >= GRAPH_MIN_MS  # a 4-us single-op engine
    assert graph_runs(5.0) == 1  # a whole network: one run per replay
    assert graph_runs(0.0) == MAX_RUNS_PER_GRAPH


# --- the builder's control flow, against a stand-in for TensorRT (tests/fake_tensorrt.py) -------

@pytest.fixture
def fake_trt(monkeypatch):
    from fake_tensorrt import make

    from hwnas.profiling.backends import tensorrt as backend

    def install(version="10.13.0"):
        fake = make(version)
        monkeypatch.setitem(sys.modules, "tensorrt", fake)
        backend.trt_logger.cache_clear()
        return fake

    yield install
    backend.trt_logger.cache_clear()


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    arch = resolve_architecture(str(REPO / "tests" / "data" / "tiny.json"))
    export_onnx(arch, folder / "dyn.onnx", dynamic_batch=True)
    export_onnx(arch, folder / "fixed.onnx", batch=4)
    export_onnx(arch, folder / "half.onnx", batch=4, fp16=True)
    return folder


def test_dynamic_batch_onnx_builds_with_its_profile_and_one_logger(fake_trt, onnx_models):
    from hwnas.profiling.backends.tensorrt import engine_from_onnx, inspector_json

    fake = fake_trt()
    build = engine_from_onnx((onnx_models / "dyn.onnx").read_bytes(), fp16=False, batch=8)
    engine_from_onnx((onnx_models / "fixed.onnx").read_bytes(), fp16=False)
    inspector_json(build.plan)
    [shapes] = fake.calls["profiles"]  # the fixed-shape model needs none
    assert list(shapes.values()) == [([1, 3, 32, 32], [8, 3, 32, 32], [8, 3, 32, 32])]
    assert len(fake.calls["loggers"]) == 1  # builders, parsers, runtimes and inspectors share it
    assert build.precision["precision"] == "fp32" and build.mode == "fp32"


def test_fp16_per_tensorrt_version_and_read_back(fake_trt, onnx_models):
    from hwnas.profiling.backends.tensorrt import engine_from_onnx

    fp32_onnx, fp16_onnx = (onnx_models / "fixed.onnx").read_bytes(), (onnx_models / "half.onnx").read_bytes()
    fake = fake_trt("10.13.0")
    build = engine_from_onnx(fp32_onnx, fp16=True)
    assert fake.calls["flags"] == ["FP16"] and build.precision["precision"] == "fp16"
    build = engine_from_onnx(fp16_onnx, fp16=True)
    assert fake.calls["network_flags"] == [0, 1 << 1] and build.mode == "strongly_typed"  # the STRONGLY_TYPED bit
    assert build.precision["precision"] == "fp16"
    fake = fake_trt("11.4.0")
    with pytest.raises(HwnasError, match="strongly typed"):
        engine_from_onnx(fp32_onnx, fp16=True)
    build = engine_from_onnx(fp16_onnx, fp16=True)
    assert fake.calls["network_flags"] == [0] and not fake.calls["flags"]  # no deprecated STRONGLY_TYPED flag
    assert build.mode == "strongly_typed" and build.precision["precision"] == "fp16"
    assert engine_from_onnx(fp32_onnx, fp16=False).precision["precision"] == "fp32"  # never called fp16


def test_a_mismatched_timing_cache_is_refused_and_kept(fake_trt, onnx_models, tmp_path, monkeypatch):
    from fake_tensorrt import CACHE_MAGIC

    from hwnas.export import engine

    fake_trt()
    monkeypatch.setattr(engine, "require_tensorrt", lambda: None)  # the stand-in has no GPU to check
    cache, plan = tmp_path / "gpu.cache", tmp_path / "m.plan"
    cache.write_bytes(b"made by another GPU")
    with pytest.raises(HwnasError, match="does not match"):
        engine.export_engine(onnx_models / "fixed.onnx", plan, timing_cache=cache)
    assert cache.read_bytes() == b"made by another GPU" and not plan.exists()
    cache.write_bytes(CACHE_MAGIC + b"ours")
    report = engine.export_engine(onnx_models / "dyn.onnx", plan, timing_cache=cache, batch=4)
    assert cache.read_bytes() == CACHE_MAGIC + b"updated" and plan.exists()
    assert report["precision"] == "fp32" and report["profile"]
    assert json.loads((tmp_path / "m.plan.json").read_text())["Layers"]
