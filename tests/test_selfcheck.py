"""The self-check (`hwnas env --check`, hwnas.selfcheck): each path against its reference on the CPU,
and each check's negative control: a wrong kernel result, a wrong timer, a batch norm that is not
global must fail it."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from hwnas.kernels.segments import SegmentSpec
from hwnas.selfcheck import cell, check, engines, kernels, nccl, timing
from hwnas.selfcheck.tolerance import ROUNDINGS, UNIT_ROUNDOFF, compare
from wrong_kernels import inject

CPU = torch.device("cpu")
SMALL = kernels.Case("small", 2, 7, 6, (SegmentSpec(3, 3), SegmentSpec(2, 5, 2, 2), SegmentSpec(2, 1)))


# --- the tolerance ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_compare_passes_within_the_tolerance_and_fails_beyond(dtype):
    expected = torch.linspace(-3, 5, 50, dtype=torch.float64)
    u = UNIT_ROUNDOFF.get(dtype)
    step = ROUNDINGS * u * 5 if dtype in (torch.float16, torch.bfloat16) else \
        {torch.float32: 1e-5, torch.float64: 1e-10}[dtype]  # the allowed difference at |ref| = 0
    near = expected.clone()
    near[10] += 0.5 * step
    assert compare("x", near, expected, dtype).ok
    far = expected.clone()
    far[10] += 3 * step * (1 + abs(float(expected[10])))
    result = compare("x", far, expected, dtype)
    assert not result.ok and result.worst > 1.5 and result.max_error == pytest.approx(float(far[10] - expected[10]))


def test_compare_fails_on_nan_and_wrong_shape_and_excludes_only_what_it_is_told():
    expected = torch.ones(4, 5, dtype=torch.float64)
    bad = expected.clone()
    bad[0, 0] = float("nan")
    result = compare("x", bad, expected, torch.float32)
    assert not result.ok and math.isinf(result.worst) and result.to_dict()["worst"] is None
    assert not compare("x", expected[:, :4], expected, torch.float32).ok
    off = expected.clone()
    off[1, 2] += 1.0
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[1, 2] = True
    excluded = compare("x", off, expected, torch.float32, exclude=mask)
    assert excluded.ok and excluded.excluded == 1
    mask[1, 2], mask[0, 0] = False, True
    assert not compare("x", off, expected, torch.float32, exclude=mask).ok


# --- the kernels --------------------------------------------------------------------------------

# (the kernels passing on the CPU twin, every case and dtype: tests/test_env_cmd.py runs `hwnas env --check`)

# Each kernel the CPU twin runs returns one wrong value: the quantities that must catch it.
CAUGHT = {"forward": {"forward", "bn-relu forward"}, "grad_input": {"grad input"},
          "grad_weight": {"grad weight", "bn-relu grad weight"}, "channel_stats": {"running mean"},
          "grad_input_bn": {"bn-relu grad h"}}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kernel", sorted(CAUGHT))
def test_a_wrong_kernel_result_fails_the_kernel_check(monkeypatch, kernel, dtype):
    inject(monkeypatch, kernel)
    found = kernels.check_kernels(CPU, dtype, cases=[SMALL])
    failed = {c.what.split(" [")[0] for c in found if not c.ok}
    assert CAUGHT[kernel] <= failed, failed


def test_the_first_use_check_is_small_and_catches_a_wrong_backward(monkeypatch):
    found = kernels.first_use(CPU, torch.float32)
    assert all(c.ok for c in found) and any("grad h" in c.what for c in found)
    inject(monkeypatch, "grad_input_bn")
    assert not all(c.ok for c in kernels.first_use(CPU, torch.float32))


# --- the fused cell -----------------------------------------------------------------------------

def test_fused_cell_passes_and_a_wrong_kernel_fails_it(monkeypatch):
    found = cell.check_cell(CPU, torch.float64)
    assert all(c.ok for c in found), max(found, key=lambda c: c.worst)
    whats = " ".join(c.what for c in found)
    assert "output" in whats and "input gradient" in whats and "running_mean" in whats and "eval output" in whats
    inject(monkeypatch, "grad_weight")
    failed = [c.what for c in cell.check_cell(CPU, torch.float64) if not c.ok]
    assert failed and all("depthwise.weight" in w for w in failed), failed


# --- timing, TensorRT, NCCL: their verdicts and their reasons to skip --------------------------

def test_timing_verdicts():
    assert all(c.ok for c in timing.verdicts(1.0, 4.05, 81.0, 81.6))
    host_only = timing.verdicts(1.0, 4.0, 0.3, 81.0)  # a timer that returned before the GPU finished
    assert host_only[0].ok and not host_only[1].ok
    not_scaled = timing.verdicts(1.0, 1.0, 20.0, 20.1)  # a timer that reports one run for four times the work
    assert not not_scaled[0].ok and not_scaled[1].ok


def test_onnxruntime_reference_of_the_tensorrt_check_is_the_network():
    net = engines.tiny_network()
    x = torch.randn(engines.SHAPE, generator=torch.Generator().manual_seed(1))
    from hwnas.profiling.onnx_io import module_to_onnx

    import copy
    got = engines.onnxruntime_output(module_to_onnx(copy.deepcopy(net), [engines.SHAPE]), x)
    with torch.no_grad():
        want = net(x)
    assert compare("ort", got, want, torch.float32).ok
    assert want.abs().max() > 1 and (want == 0).float().mean() > 0.1  # BN and ReLU do something
    wrong = got.clone()
    wrong[0, 0] += 0.05 * float(want.abs().max())  # 0.05 of the largest output: far over 32 fp16 roundings
    assert not compare("engine", wrong, want, torch.float16, roundings=engines.ENGINE_ROUNDINGS).ok


def test_paths_this_machine_cannot_run_say_why(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert "TensorRT is not installed" in check.tensorrt_why_not()
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    assert check.cuda_why_not().startswith("no CUDA GPU")
    assert nccl.why_not() == "needs 2 CUDA GPUs, the machine has 0"
    paths = check.plan(tmp_path)
    runnable = [p.name for p in paths if p.skip is None]
    assert runnable == ["kernels cpu float64 (CPU twin)", "kernels cpu float32 (CPU twin)", "fused cell cpu float64",
                        "fused cell cpu float32"]
    assert all(p.skip for p in paths if p.name not in runnable)


@pytest.mark.slow
@pytest.mark.parametrize("sync", [True, False], ids=["global", "per_share"])
def test_two_processes_with_global_batch_norm_match_one(tmp_path, sync):
    """The NCCL path's own code on CPU processes with gloo; batch norms over each process's share
    only (the negative control) must fail it."""
    found = nccl.check_global_bn(tmp_path, backend="gloo", device_type="cpu", sync=sync)
    assert {c.what.split(": ")[0] for c in found} == set(nccl.PROBLEMS)
    failed = [c.what for c in found if not c.ok]
    if sync:
        assert not failed, failed
    else:
        assert any("batch norm: output" in w for w in failed) and any("fused layer: output" in w for w in failed)


def test_a_path_that_raises_has_failed_and_the_budget_skips():
    def broken():
        raise OSError("libmixed_dw.so: invalid ELF header\nsecond line")

    result = check.run_path(check.Check("broken", 1.0, broken))
    assert result.status == check.FAILED and result.detail == "OSError: libmixed_dw.so: invalid ELF header"
    assert result.to_dict()["error"].endswith("invalid ELF header\nsecond line")
    empty = check.run_path(check.Check("empty", 1.0, lambda: []))
    assert empty.status == check.FAILED


def test_run_checks_within_a_budget(monkeypatch):
    ran = []
    monkeypatch.setattr(check, "plan", lambda folder: [
        check.Check("quick", 0.0, lambda: ran.append("quick") or [compare("q", torch.ones(1), torch.ones(1),
                                                                            torch.float64)]),
        check.Check("costly", 100.0, lambda: ran.append("costly") or []),
        check.Check("absent", 1.0, None, "no such device")])
    results = check.run_checks(budget_s=10, progress=False)
    assert ran == ["quick"] and [r.status for r in results] == ["passed", "skipped", "skipped"]
    assert "budget leaves" in results[1].detail and results[2].detail == "no such device"
