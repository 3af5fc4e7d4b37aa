"""`hwnas export onnx`: an architecture as a verified, self-contained ONNX model."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hwnas._version import __version__
from hwnas.errors import HwnasError
from hwnas.files import atomic_path, write_bytes
from hwnas.model.checkpoints import upgrade_state_dict
from hwnas.model.network import Network, build_network
from hwnas.profiling.onnx_io import module_to_onnx
from hwnas.progress import progress_bar
from hwnas.spaces.arch import Architecture

# Refuse an export whose ONNX output differs from PyTorch's by more than this (relative to the
# output's scale): fp32 graphs differ by rounding only; fp16 by its 11-bit mantissa.
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}


def seeded_network(arch: Architecture, seed: int = 0, weights: str | None = None) -> Network:
    """Deterministic weights from the seed (BN statistics and affine randomised too, so that
    folding them is exercised), or a checkpoint's state_dict."""
    net = build_network(arch, seed)
    if weights:
        from hwnas.files import read_bytes

        data = read_bytes(weights, "checkpoint")  # missing, a folder, unreadable: one line
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a file that is not a checkpoint
            raise HwnasError(f"{weights} is not a PyTorch checkpoint of tensors (torch.load: {type(exc).__name__}); "
                             f"give a file saved with torch.save(net.state_dict(), PATH)") from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise HwnasError(f"checkpoint {weights} holds a {type(state).__name__} that is not a state_dict (a "
                             f"mapping of names to tensors); save net.state_dict()")
        # a checkpoint with positional layer names (branches.0.1.0.weight) is renamed, then checked
        try:
            missing, unexpected = net.load_state_dict(upgrade_state_dict(net, state), strict=False)
        except RuntimeError as exc:  # shapes that differ; torch's message spans lines
            raise HwnasError(f"checkpoint {weights} does not fit {arch.name}: {' '.join(str(exc).split())}") from None
        if missing or unexpected:
            raise HwnasError(f"checkpoint {weights} does not fit {arch.name}: missing {missing[:3]}..., "
                             f"unexpected {unexpected[:3]}...")
    else:
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.copy_(1 + 0.2 * torch.randn(m.num_features, generator=gen))
                    m.bias.copy_(0.1 * torch.randn(m.num_features, generator=gen))
                    stats: Any = m  # running statistics are Optional in torch's stubs
                    stats.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
                    stats.running_var.copy_(1 + 0.2 * torch.rand(m.num_features, generator=gen))
    return net.eval()


@dataclass
class ExportReport:
    path: str
    nodes: int
    max_abs_error: float
    max_rel_error: float
    batch: int | str
    reparam: bool
    precision: str

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def count_nodes(model_bytes: bytes) -> int:
    import onnx

    return len(onnx.load_model_from_string(model_bytes).graph.node)


def verify(model_bytes: bytes, reference: nn.Module, shape: tuple[int, ...], precision: str,
           seed: int) -> tuple[float, float]:
    """Max abs and relative (to the output's max magnitude) error of onnxruntime vs PyTorch fp32."""
    import onnxruntime as ort

    gen = torch.Generator().manual_seed(seed + 2)
    x = torch.randn(shape, generator=gen)
    with torch.no_grad():
        want = reference.eval().float()(x).numpy()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    feed = x.numpy().astype(np.float16 if precision == "fp16" else np.float32)
    got = session.run(None, {session.get_inputs()[0].name: feed})[0].astype(np.float32)
    abs_err = float(np.max(np.abs(got - want)))
    return abs_err, abs_err / max(float(np.max(np.abs(want))), 1e-12)


def export_onnx(arch: Architecture, out: str | Path, batch: int = 16, dynamic_batch: bool = False,
                reparam: bool = False, fp16: bool = False, seed: int = 0, weights: str | None = None,
                merge: str = "auto", verify_batch: int = 2, progress: bool = False) -> ExportReport:
    """Export an architecture (BN in eval mode) to one ONNX file, verified against PyTorch with
    onnxruntime; nothing is written when they differ by more than TOLERANCE.

    progress: a bar on stderr over the steps (build, export, verify, write), with the time left."""
    net = seeded_network(arch, seed, weights)  # a checkpoint that does not fit is refused before any bar
    with progress_bar(len(EXPORT_STEPS), "export", "step", progress) as bar:
        return _export_onnx(arch, net, Path(out), batch, dynamic_batch, reparam, fp16, seed, weights, merge,
                            verify_batch, bar)


EXPORT_STEPS = ("prepare the network", "export to ONNX", "verify with onnxruntime", "write")


def _export_onnx(arch: Architecture, net: Network, out: Path, batch: int, dynamic_batch: bool, reparam: bool,
                 fp16: bool, seed: int, weights: str | None, merge: str, verify_batch: int, bar: Any) -> ExportReport:
    import onnx

    def step(index: int) -> None:
        bar.update(index - bar.n)
        bar.set_postfix_str(EXPORT_STEPS[index])

    step(0)
    module: nn.Module = net
    if reparam:
        from hwnas.export.reparam import reparameterize

        module = reparameterize(net, merge)
    precision = "fp16" if fp16 else "fp32"
    shape = (verify_batch if dynamic_batch else batch, 3, arch.macro.input, arch.macro.input)
    step(1)
    model_bytes = module_to_onnx(module, [shape], dynamic_batch=dynamic_batch,
                                 dtype=torch.float16 if fp16 else torch.float32)
    module.float()
    model = onnx.load_model_from_string(model_bytes)
    meta = {"hwnas_version": __version__, "hwnas_arch": json.dumps(arch.document()), "hwnas_arch_name": arch.name,
            "hwnas_space": arch.space.name, "hwnas_reparam": str(reparam), "hwnas_seed": str(seed),
            "hwnas_weights": weights or "seeded"}
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model_bytes = model.SerializeToString()
    step(2)
    abs_err, rel_err = verify(model_bytes, net, shape, precision, seed)
    if not math.isfinite(rel_err) or rel_err > TOLERANCE[precision]:
        raise HwnasError(f"the ONNX export of {arch.name} does not match PyTorch: max abs error {abs_err:.3g}, "
                         f"relative {rel_err:.3g} > {TOLERANCE[precision]}; nothing was written")
    step(3)
    if len(model_bytes) < 2 ** 31 - 2 ** 20:
        write_bytes(out, model_bytes)  # one self-contained file, whole or not at all
    else:  # protobuf's 2 GB limit: weights beside it, written before the model that names them
        data = out.with_name(out.name + ".data")
        try:
            with atomic_path(out) as tmp:
                onnx.save_model(model, str(tmp), save_as_external_data=True, location=data.name)
        except BaseException:
            data.unlink(missing_ok=True)
            raise
    bar.update(len(EXPORT_STEPS) - bar.n)
    return ExportReport(str(out), len(model.graph.node), abs_err, rel_err, "dynamic" if dynamic_batch else batch,
                        reparam, precision)
