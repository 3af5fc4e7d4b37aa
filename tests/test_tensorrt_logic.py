"""The TensorRT backend's decisions that need no GPU: build mode per version, the dynamic-batch
profile, the precision read back from the inspector, CUDA-graph sizing. (The calls into
TensorRT itself are type-checked in test_tensorrt_types.py; they cannot run without a GPU.)"""

from __future__ import annotations

import json

import onnx
import pytest

from hwnas.errors import HwnasError
from hwnas.export.onnx_export import export_onnx
from hwnas.profiling.backends.tensorrt import (GRAPH_MIN_MS, MAX_RUNS_PER_GRAPH, batch_profile, build_mode,
                                              check_precision, engine_precision, graph_runs, input_shape)
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
