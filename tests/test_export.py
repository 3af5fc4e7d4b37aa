"""ONNX export (plain, re-parameterised, fp16), verified with onnxruntime; `hwnas bench`."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from hwnas.cli.main import main
from hwnas.errors import HwnasError
from hwnas.export.onnx_export import export_onnx, seeded_network
from hwnas.export.reparam import reparameterize
from hwnas.spaces import builtin, resolve_architecture

from conftest import REPO

TINY = str(REPO / "tests" / "data" / "tiny.json")


def run_onnx(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("name", ["nsenet_gpu", "nsenet27", "nsenet"])
def test_plain_and_reparam_exports_agree(tmp_path, name):
    arch = builtin().networks[name]
    plain = export_onnx(arch, tmp_path / "plain.onnx", batch=2)
    fused = export_onnx(arch, tmp_path / "reparam.onnx", batch=2, reparam=True)
    assert fused.nodes < plain.nodes
    assert plain.max_rel_error < 1e-4 and fused.max_rel_error < 1e-4
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32)
    a, b = run_onnx(tmp_path / "plain.onnx", x), run_onnx(tmp_path / "reparam.onnx", x)
    assert np.max(np.abs(a - b)) / np.max(np.abs(a)) <= 1e-4
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "plain.onnx")).metadata_props}
    assert json.loads(props["hwnas_arch"])["networks"][name] == arch.to_dict()
    assert props["hwnas_space"] == arch.space.name
    assert "hwnas_version" in props


@pytest.mark.parametrize("merge", ["auto", "padded", "grouped"])
def test_reparam_is_the_same_function_in_torch(merge):
    arch = resolve_architecture(TINY)
    net = seeded_network(arch, seed=3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reparameterize(net, merge)(x), net(x), rtol=1e-5, atol=1e-6)


def test_dynamic_batch_and_fp16(tmp_path):
    arch = resolve_architecture(TINY)
    export_onnx(arch, tmp_path / "dyn.onnx", dynamic_batch=True, reparam=True)
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32), dtype=np.float32)
        assert run_onnx(tmp_path / "dyn.onnx", x).shape == (batch, 10)
    half = export_onnx(arch, tmp_path / "half.onnx", batch=2, fp16=True)
    model = onnx.load(str(tmp_path / "half.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert half.max_rel_error < 2e-2


def test_checkpoint_weights_and_mismatch(tmp_path):
    arch = resolve_architecture(TINY)
    net = seeded_network(arch, seed=5)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    report = export_onnx(arch, tmp_path / "w.onnx", batch=2, weights=str(tmp_path / "w.pt"))
    assert report.max_rel_error < 1e-4
    torch.save({"bogus": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(HwnasError, match="does not fit"):
        export_onnx(arch, tmp_path / "x.onnx", weights=str(tmp_path / "bad.pt"))


def test_bench_cli_json(tmp_path, capsys):
    export_onnx(resolve_architecture(TINY), tmp_path / "t.onnx", batch=4)
    code = main(["bench", str(tmp_path / "t.onnx"), "--backend", "ort", "--batch", "4", "--warmup-ms", "20",
                 "--duration-s", "0.3", "--iterations", "5", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["backend"] == "ort" and out["batch"] == 4 and out["iterations"] >= 5
    lat = out["latency_ms"]
    assert lat["min"] <= lat["median"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert out["throughput_ips"] > 0 and out["cov"] >= 0
    code = main(["bench", str(tmp_path / "t.onnx"), "--backend", "torch"])
    assert code == 1 and "not ONNX files" in capsys.readouterr().err


def test_engine_export_needs_tensorrt(tmp_path, capsys):
    code = main(["export", "engine", str(tmp_path / "x.onnx"), "-o", str(tmp_path / "x.plan")])
    assert code == 1 and "hwnas[gpu]" in capsys.readouterr().err
