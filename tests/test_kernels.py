"""The mixed depthwise kernel: CPU twin against torch's convs and autograd, input checks,
and the CUDA source compiled for the supported GPUs (nvcc -Xptxas -v and NVRTC)."""

from __future__ import annotations

import random
import re
import shutil
import subprocess

import pytest
import torch

from hwnas.kernels import KernelInputError, SegmentSpec, mixed_depthwise, reference_mixed_depthwise
from hwnas.kernels.cuda import ARCHS
from hwnas.kernels.ops import MixedDepthwiseFn
from hwnas.kernels.segments import SOURCE_DIR


def random_segments(rng: random.Random, count: int, max_channels: int = 5) -> list[SegmentSpec]:
    return [SegmentSpec(rng.randint(1, max_channels), rng.choice([3, 5, 7, 9, 11]), rng.randint(1, 3),
                        rng.choice([1, 2])) for _ in range(count)]


def inputs(segments, n=2, h=13, w=11, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, sum(s.channels for s in segments), h, w, generator=gen, dtype=dtype)
    weights = [torch.randn(s.channels, s.kernel, s.kernel, generator=gen, dtype=dtype) for s in segments]
    return x, weights


IMPLS = ["fast", "elementwise"]  # the CPU plane forms, and the per-element forms the CUDA kernels use


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("seed", range(6))
def test_forward_matches_torch_conv(seed, impl):
    rng = random.Random(seed)
    segments = random_segments(rng, rng.randint(1, 6))
    x, weights = inputs(segments, h=rng.randint(5, 16), w=rng.randint(5, 16), seed=seed)
    ours = mixed_depthwise(x, torch.cat([w.reshape(-1) for w in weights]), segments, impl)
    for got, want in zip(ours, reference_mixed_depthwise(x, weights, segments)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("seed", range(4))
def test_gradients_match_torch_autograd(seed, impl):
    rng = random.Random(100 + seed)
    segments = random_segments(rng, rng.randint(2, 5))
    x, weights = inputs(segments, h=12, w=12, seed=seed)
    flat = torch.cat([w.reshape(-1) for w in weights]).requires_grad_()
    x1 = x.clone().requires_grad_()
    outs = mixed_depthwise(x1, flat, segments, impl)
    upstream = [torch.randn_like(o) for o in outs]
    sum((o * u).sum() for o, u in zip(outs, upstream)).backward()
    x2 = x.clone().requires_grad_()
    ws = [w.clone().requires_grad_() for w in weights]
    refs = reference_mixed_depthwise(x2, ws, segments)
    sum((o * u).sum() for o, u in zip(refs, upstream)).backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(flat.grad, torch.cat([w.grad.reshape(-1) for w in ws]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_double(impl):
    segments = [SegmentSpec(2, 3, 1, 1), SegmentSpec(1, 5, 2, 2), SegmentSpec(2, 3, 3, 2)]
    x, weights = inputs(segments, n=1, h=7, w=6, dtype=torch.float64)
    flat = torch.cat([w.reshape(-1) for w in weights])
    assert torch.autograd.gradcheck(lambda a, b: MixedDepthwiseFn.apply(a, b, tuple(segments), impl),
                                    (x.requires_grad_(), flat.requires_grad_()))


def test_unused_segment_outputs_get_zero_gradient():
    segments = [SegmentSpec(2, 3), SegmentSpec(3, 5, 1, 2)]
    x, weights = inputs(segments, n=1, h=8, w=8)
    flat = torch.cat([w.reshape(-1) for w in weights]).requires_grad_()
    outs = mixed_depthwise(x, flat, segments)
    outs[1].sum().backward()  # segment 0 unused: its weights get exactly zero
    assert torch.all(flat.grad[:2 * 9] == 0) and torch.any(flat.grad[2 * 9:] != 0)


@pytest.mark.parametrize("impl", IMPLS)
def test_supernet_shape_float32(impl):
    """A real layer: 6 depthwise branches of a latency19 cell at N-64-64-28 (hidden 64*T), batch 4."""
    segments = [SegmentSpec(64 * t, k) for k in (3, 5, 7) for t in (1, 3)]
    x, weights = inputs(segments, n=4, h=28, w=28)
    ours = mixed_depthwise(x, torch.cat([w.reshape(-1) for w in weights]), segments, impl)
    for got, want in zip(ours, reference_mixed_depthwise(x, weights, segments)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mutate,message", [
    (lambda x, w, s: (x.half(), w.half(), s), "not supported on cpu"),
    (lambda x, w, s: (x, w.double(), s), "one dtype"),
    (lambda x, w, s: (x.transpose(2, 3), w, s), "contiguous"),
    (lambda x, w, s: (x[:, :-1].contiguous(), w, s), "channels"),
    (lambda x, w, s: (x, w[:-1], s), "flat concatenation"),
    (lambda x, w, s: (x[0], w, s), r"\(N, C, H, W\)"),
    (lambda x, w, s: (x, w, [SegmentSpec(3, 4)]), "kernel must be odd"),
    (lambda x, w, s: (x, w, [SegmentSpec(1, 3)] * 33), "1..32 segments"),
    (lambda x, w, s: (x, w, [SegmentSpec(3, 3, 1, 3)]), "stride 1 or 2"),
])
def test_bad_inputs_are_refused(mutate, message):
    segments = [SegmentSpec(3, 3)]
    x, weights = inputs(segments)
    x2, w2, s2 = mutate(x, weights[0].reshape(-1), segments)
    with pytest.raises(KernelInputError, match=message):
        mixed_depthwise(x2, w2, s2)


# --- CUDA: compile for the GPUs we support -----------------------------------------------------

NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("arch", ARCHS)
def test_nvcc_compiles_without_spills(arch, tmp_path):
    proc = subprocess.run([NVCC, "-std=c++17", "-cubin", f"-arch={arch}", f"-I{SOURCE_DIR}", "-Xptxas", "-v",
                           str(SOURCE_DIR / "mixed_dw.cu"), "-o", str(tmp_path / "k.cubin")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = proc.stderr
    functions = re.findall(r"Compiling entry function '(\w+)'", report)
    assert len(functions) == 9, report
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill stores", report)]
    spills += [int(n) for n in re.findall(r"(\d+) bytes spill loads", report)]
    assert spills and max(spills) == 0, report
    registers = [int(n) for n in re.findall(r"Used (\d+) registers", report)]
    assert len(registers) == 9 and max(registers) <= 255
    print(f"{arch}: registers per kernel {dict(zip(functions, registers))}")


def _have_nvrtc() -> bool:
    try:
        from cuda.bindings import nvrtc  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _have_nvrtc(), reason="cuda-python with NVRTC is not installed (pip install 'hwnas[gpu]')")
@pytest.mark.parametrize("arch", ARCHS)
def test_nvrtc_compiles_the_runtime_path(arch):
    from hwnas.kernels.cuda import KERNELS, compile_cubin

    cubin, _log = compile_cubin(arch)
    assert cubin[:4] == b"\x7fELF"
    for name in KERNELS:
        assert name.encode() in cubin


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu_twin(dtype):
    rng = random.Random(7)
    segments = random_segments(rng, 5, max_channels=16)
    x, weights = inputs(segments, n=4, h=20, w=20)
    flat = torch.cat([w.reshape(-1) for w in weights])
    cpu = mixed_depthwise(x, flat, segments)
    gpu = mixed_depthwise(x.cuda().to(dtype), flat.cuda().to(dtype), segments)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b.float().cpu(), a, rtol=tol, atol=tol)
