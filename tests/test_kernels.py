"""The mixed depthwise kernel: CPU twin against torch's convs and autograd, input checks,
and the CUDA source compiled for the supported GPUs (nvcc -Xptxas -v and NVRTC)."""

from __future__ import annotations

import random
import re
import shutil
import subprocess

import pytest
import torch

from hwnas.kernels import (KernelInputError, SegmentSpec, mixed_depthwise, mixed_depthwise_bn_relu,
                           reference_mixed_depthwise)
from hwnas.kernels.cuda import ARCHS, KERNELS
from hwnas.kernels.segments import segment_table
from hwnas.kernels.sources import source_dir
from low_precision import assert_matches, boundary, rounded


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("width", [1, 3, 8, 9, 17, 25, 32, 33, 45, 70])
def test_plane_forms_over_row_widths(width, dtype):
    """The plane forms keep blocks of up to 4 vectors of a row in registers (8 floats or 4
    doubles each) and several rows per block: every block shape, the row and column tails,
    wide rows split into chunks, both strides and a dilation, with the BN+ReLU prologue, against
    torch in forward and backward; 1x1 segments at stride 1 take the elementwise shortcut."""
    segments = [SegmentSpec(2, 3), SegmentSpec(3, 5, 1, 2), SegmentSpec(2, 7, 2, 1), SegmentSpec(1, 3, 3, 2),
                SegmentSpec(1, 3, 2, 2),  # dilation 2, stride 2: taps read one phase only
                SegmentSpec(2, 1), SegmentSpec(1, 1, 1, 2)]  # 1x1: elementwise (the fused BN2), strided
    h, weights = inputs(segments, n=2, h=11, w=width, dtype=dtype, seed=width)
    bn = bn_inputs(h.shape[1], dtype=dtype, seed=width)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    grad_tol = {k: 10 * v for k, v in tol.items()}
    for training in (True, False):
        ours, ours_grads, upstream = run_bn_relu(h, weights, segments, *bn, training, "fast")
        refs, ref_grads, _ = run_bn_relu(h, weights, segments, *bn, training, "fast", upstream, fused=False)
        for got, want in zip(ours, refs):
            torch.testing.assert_close(got, want, **tol)
        for got, want in zip(ours_grads, ref_grads):
            torch.testing.assert_close(got, want, **grad_tol)
    x1 = h.clone().requires_grad_()  # the plain convolution (no prologue), its own backward
    flat = torch.cat([w.reshape(-1) for w in weights]).requires_grad_()
    outs = mixed_depthwise(x1, flat, segments, "fast")
    sum((o * u).sum() for o, u in zip(outs, upstream)).backward()
    x2 = h.clone().requires_grad_()
    ws = [w.clone().requires_grad_() for w in weights]
    sum((o * u).sum() for o, u in zip(reference_mixed_depthwise(x2, ws, segments), upstream)).backward()
    torch.testing.assert_close(x1.grad, x2.grad, **grad_tol)
    torch.testing.assert_close(flat.grad, torch.cat([w.grad.reshape(-1) for w in ws]), **grad_tol)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_double(impl):
    segments = [SegmentSpec(2, 3, 1, 1), SegmentSpec(1, 5, 2, 2), SegmentSpec(2, 3, 3, 2)]
    x, weights = inputs(segments, n=1, h=7, w=6, dtype=torch.float64)
    flat = torch.cat([w.reshape(-1) for w in weights])
    assert torch.autograd.gradcheck(lambda a, b: mixed_depthwise(a, b, segments, impl),
                                    (x.requires_grad_(), flat.requires_grad_()))
    parts = [t.contiguous().requires_grad_() for t in x.detach().split([s.channels for s in segments], 1)]
    assert torch.autograd.gradcheck(lambda b, *p: mixed_depthwise(p, b, segments, impl), (flat, *parts))


def test_unused_segment_outputs_get_zero_gradient():
    segments = [SegmentSpec(2, 3), SegmentSpec(3, 5, 1, 2)]
    x, weights = inputs(segments, n=1, h=8, w=8)
    flat = torch.cat([w.reshape(-1) for w in weights]).requires_grad_()
    outs = mixed_depthwise(x, flat, segments)
    outs[1].sum().backward()  # segment 0 unused: its weights get exactly zero
    assert torch.all(flat.grad[:2 * 9] == 0) and torch.any(flat.grad[2 * 9:] != 0)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_that_are_not_contiguous(impl):
    """The backward kernels read each output's gradient where autograd leaves it: an expanded
    gradient (from .sum()) and a transposed one are made contiguous first."""
    segments = [SegmentSpec(2, 3), SegmentSpec(3, 5, 2, 2), SegmentSpec(1, 7)]
    x, weights = inputs(segments, n=2, h=9, w=9, seed=3)
    upstream = [torch.randn(o.shape[0], o.shape[1], o.shape[3], o.shape[2])
                for o in reference_mixed_depthwise(x, weights, segments)]

    def loss(outs):  # segment 0: expanded gradient; the others: transposed gradients
        return outs[0].sum() + sum((o.transpose(2, 3) * u).sum() for o, u in zip(outs[1:], upstream[1:]))

    flat = torch.cat([w.reshape(-1) for w in weights]).requires_grad_()
    x1 = x.clone().requires_grad_()
    loss(mixed_depthwise(x1, flat, segments, impl)).backward()
    x2 = x.clone().requires_grad_()
    ws = [w.clone().requires_grad_() for w in weights]
    loss(reference_mixed_depthwise(x2, ws, segments)).backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(flat.grad, torch.cat([w.grad.reshape(-1) for w in ws]), rtol=1e-4, atol=1e-4)


def test_segment_blocks_are_checked():
    """Each segment's output block is a tensor of its own, addressed through the table."""
    segments = [SegmentSpec(2, 3), SegmentSpec(1, 5, 1, 2)]
    x, _ = inputs(segments, n=2, h=8, w=8)
    good = [torch.empty(2, 2, 8, 8), torch.empty(2, 1, 4, 4)]
    table, total = segment_table([x], segments, good)
    assert total == 2 * 2 * 64 + 2 * 16
    assert [table.seg[i].out_block for i in range(2)] == [b.data_ptr() for b in good]
    # input channels: offsets into the one concatenated tensor, or each segment's own tensor
    assert [table.seg[i].in_block for i in range(2)] == [x.data_ptr(), x.data_ptr() + 2 * 64 * 4]
    assert [table.seg[i].in_batch_stride for i in range(2)] == [3 * 64] * 2
    parts = [x[:, :2].contiguous(), x[:, 2:].contiguous()]
    table, _ = segment_table(parts, segments, good)
    assert [(table.seg[i].in_block, table.seg[i].in_batch_stride) for i in range(2)] == [
        (parts[0].data_ptr(), 2 * 64), (parts[1].data_ptr(), 64)]
    for bad in ([good[0], torch.empty(2, 1, 8, 8)], [good[0], torch.empty(2, 1, 4, 4).double()],
                [good[0], torch.empty(2, 1, 4, 4).transpose(2, 3)]):
        with pytest.raises(KernelInputError, match="segment 1: its block"):
            segment_table([x], segments, bad)


@pytest.mark.parametrize("impl", IMPLS)
def test_supernet_shape_float32(impl):
    """A real layer: 6 depthwise branches of a latency19 cell at N-64-64-28 (hidden 64*T), batch 4."""
    segments = [SegmentSpec(64 * t, k) for k in (3, 5, 7) for t in (1, 3)]
    x, weights = inputs(segments, n=4, h=28, w=28)
    ours = mixed_depthwise(x, torch.cat([w.reshape(-1) for w in weights]), segments, impl)
    for got, want in zip(ours, reference_mixed_depthwise(x, weights, segments)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# --- the BN1 + ReLU prologue (scale/shift and ReLU on load, BN backward in the epilogue) -------

def bn_inputs(channels: int, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    gamma = torch.rand(channels, generator=gen, dtype=dtype) + 0.5
    beta = torch.randn(channels, generator=gen, dtype=dtype) * 0.5  # ReLU cuts a real share
    mean = torch.randn(channels, generator=gen, dtype=dtype) * 0.1
    var = torch.rand(channels, generator=gen, dtype=dtype) + 0.5
    return gamma, beta, mean, var


LAYOUTS = ["concatenated", "per_segment", "per_segment_overwrite"]  # how h reaches the kernel


def run_bn_relu(h, weights, segments, gamma, beta, mean, var, training, impl, upstream=None, fused=True,
                layout="concatenated"):
    """Outputs and gradients (h, depthwise weights, gamma, beta) plus the updated running stats,
    by the prologue kernel or by torch's batch_norm + relu + one conv per segment. layout: h as
    one tensor, or one tensor per segment (the fused layer's CPU form), whose backward may write
    dL/dh over them (overwrite: they are intermediates of a product with 1, as the expand convs'
    outputs are)."""
    h = h.clone().requires_grad_()
    g, b = gamma.clone().requires_grad_(), beta.clone().requires_grad_()
    rm, rv = mean.clone(), var.clone()
    if fused:
        flat = torch.cat([w.reshape(-1) for w in weights]).requires_grad_()
        overwrite = layout == "per_segment_overwrite"
        hs = h if layout == "concatenated" else [t.contiguous() * 1.0 if overwrite else t.contiguous()
                                                 for t in h.split([s.channels for s in segments], 1)]
        outs = mixed_depthwise_bn_relu(hs, flat, segments, g, b, rm, rv, training, 0.1, 1e-5, impl,
                                       overwrite_h=overwrite)
    else:
        ws = [w.clone().requires_grad_() for w in weights]
        a = torch.relu(torch.nn.functional.batch_norm(h, rm, rv, g, b, training, 0.1, 1e-5))
        outs = reference_mixed_depthwise(a, ws, segments)
    upstream = upstream or [torch.randn_like(o) for o in outs]
    sum((o * u).sum() for o, u in zip(outs, upstream)).backward()
    grad_w = flat.grad if fused else torch.cat([w.grad.reshape(-1) for w in ws])
    return outs, [h.grad, grad_w, g.grad, b.grad, rm, rv], upstream


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("seed", range(3))
def test_bn_relu_prologue_matches_torch(seed, training, impl, layout):
    rng = random.Random(300 + seed)
    segments = random_segments(rng, rng.randint(2, 5))
    h, weights = inputs(segments, n=3, h=rng.randint(6, 14), w=rng.randint(6, 14), seed=seed)
    bn = bn_inputs(h.shape[1], seed=seed)
    ours, ours_grads, upstream = run_bn_relu(h, weights, segments, *bn, training, impl, layout=layout)
    refs, ref_grads, _ = run_bn_relu(h, weights, segments, *bn, training, impl, upstream, fused=False)
    for got, want in zip(ours, refs):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    names = ["grad h", "grad depthwise weight", "grad gamma", "grad beta", "running mean", "running var"]
    for got, want, name in zip(ours_grads, ref_grads, names):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.parametrize("impl", IMPLS)
def test_bn_relu_backward_is_accurate_when_the_mean_dwarfs_the_spread(impl):
    """h = 3000 + N(0, 1) in fp32, against the same computation in fp64 (errors relative to each
    gradient's largest value). The epilogue sums g * (h - mean), centred: grad gamma's error is
    ~1e-4 here; with uncentred sums of g * h it is 4e-4 to 1.6e-3 (seen over seeds 0-4)."""
    torch.manual_seed(0)
    segments = [SegmentSpec(4, 3), SegmentSpec(3, 5, 1, 2)]
    h, weights = inputs(segments, n=4, h=12, w=12)
    h = h + 3000.0
    bn = bn_inputs(7)
    ours, ours_grads, upstream = run_bn_relu(h, weights, segments, *bn, True, impl)
    wide = [t.double() for t in bn]
    _, ref_grads, _ = run_bn_relu(h.double(), [w.double() for w in weights], segments, *wide, True, impl,
                                  [u.double() for u in upstream], fused=False)
    for i, name, bound in [(0, "grad h", 1e-4), (2, "grad gamma", 2.5e-4), (3, "grad beta", 1e-5)]:
        error = (ours_grads[i].double() - ref_grads[i]).abs().max() / ref_grads[i].abs().max()
        assert error < bound, f"{name}: relative error {error:.2e}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_bn_relu_gradcheck_double(training, impl):
    segments = [SegmentSpec(2, 3, 1, 1), SegmentSpec(1, 5, 2, 2), SegmentSpec(2, 3, 3, 2)]
    h, weights = inputs(segments, n=2, h=6, w=5, dtype=torch.float64)
    flat = torch.cat([w.reshape(-1) for w in weights])
    gamma, beta, mean, var = bn_inputs(5, torch.float64)

    def fn(w_, g_, b_, *h_):  # fresh running stats each call: gradcheck calls it many times
        return mixed_depthwise_bn_relu(h_, w_, segments, g_, b_, mean.clone(), var.clone(), training, 0.1, 1e-5,
                                       impl)

    assert torch.autograd.gradcheck(fn, tuple(t.requires_grad_() for t in (flat, gamma, beta, h)))
    parts = [t.contiguous().requires_grad_() for t in h.detach().split([s.channels for s in segments], 1)]
    assert torch.autograd.gradcheck(fn, (flat, gamma, beta, *parts))


def test_bn_relu_refuses_wrong_statistics_shape():
    segments = [SegmentSpec(3, 3)]
    h, weights = inputs(segments)
    gamma, beta, mean, var = bn_inputs(3)
    with pytest.raises(KernelInputError, match=r"shape \(3,\)"):
        mixed_depthwise_bn_relu(h, weights[0].reshape(-1), segments, gamma, beta, mean[:2], var, True)


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


def test_bad_per_segment_inputs_are_refused():
    segments = [SegmentSpec(2, 3), SegmentSpec(1, 5)]
    x, weights = inputs(segments)
    flat = torch.cat([w.reshape(-1) for w in weights])
    parts = [x[:, :2].contiguous(), x[:, 2:].contiguous()]
    for bad, message in [([parts[1], parts[0]], r"channels, the segments \[2, 1\]"),
                         ([parts[0]] * 3, "one per segment"),
                         ([parts[0], parts[1][:, :, :-1].contiguous()], "differ in batch or size"),
                         ([parts[0], x[:, 2:]], "contiguous")]:
        with pytest.raises(KernelInputError, match=message):
            mixed_depthwise(bad, flat, segments)


# --- CUDA: compile for the GPUs we support -----------------------------------------------------

NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("arch", ARCHS)
def test_nvcc_compiles_without_spills(arch, tmp_path):
    proc = subprocess.run([NVCC, "-std=c++17", "-cubin", f"-arch={arch}", f"-I{source_dir()}", "-Xptxas", "-v",
                           str(source_dir() / "mixed_dw.cu"), "-o", str(tmp_path / "k.cubin")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = proc.stderr
    functions = re.findall(r"Compiling entry function '(\w+)'", report)
    assert len(functions) == len(KERNELS), report
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill stores", report)]
    spills += [int(n) for n in re.findall(r"(\d+) bytes spill loads", report)]
    assert spills and max(spills) == 0, report
    registers = [int(n) for n in re.findall(r"Used (\d+) registers", report)]
    assert len(registers) == len(KERNELS) and max(registers) <= 255
    print(f"{arch}: registers per kernel {dict(zip(functions, registers))}")


def _have_nvrtc() -> bool:
    try:
        from cuda.bindings import nvrtc  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _have_nvrtc(), reason="cuda-bindings with NVRTC is not installed (pip install 'hwnas[cuda13]')")
@pytest.mark.parametrize("arch", ARCHS)
def test_nvrtc_compiles_the_runtime_path(arch):
    from hwnas.kernels.nvrtc import compile_cubin

    cubin, _log = compile_cubin(arch)
    assert cubin[:4] == b"\x7fELF"
    for name in KERNELS:
        assert name.encode() in cubin


# The CUDA runs are compared with the CPU twin in float64 on the same inputs rounded to the
# run's dtype, within ROUNDINGS unit roundoffs of the dtype (tests/low_precision.py says why;
# tests/test_low_precision.py rehearses the scheme against torch's own fp16/bf16 path).
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu_twin(dtype):
    rng = random.Random(7)
    segments = random_segments(rng, 5, max_channels=16)
    x, weights = inputs(segments, n=4, h=20, w=20)
    flat = torch.cat([w.reshape(-1) for w in weights])
    ref = mixed_depthwise(rounded(x, dtype), rounded(flat, dtype), segments)
    gpu = mixed_depthwise(x.cuda().to(dtype), flat.cuda().to(dtype), segments)
    for got, want in zip(gpu, ref):
        assert_matches(got, want, dtype, "output")


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["concatenated", "per_segment"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_bn_relu_prologue_matches_cpu_twin(dtype, training, layout):
    rng = random.Random(8)
    segments = random_segments(rng, 5, max_channels=16)
    h, weights = inputs(segments, n=4, h=20, w=20)
    bn = bn_inputs(h.shape[1])  # the parameters and running statistics stay fp32 on the GPU too
    upstream = [torch.randn(o.shape) for o in run_bn_relu(h, weights, segments, *bn, training, "fast")[0]]
    bn64 = [b.double() for b in bn]
    hr = rounded(h, dtype)
    ref, ref_grads, _ = run_bn_relu(hr, [rounded(w, dtype) for w in weights], segments, *bn64, training, "fast",
                                    [rounded(u, dtype) for u in upstream])
    cuda = [t.cuda() for t in bn]
    gpu, gpu_grads, _ = run_bn_relu(h.cuda().to(dtype), [w.cuda().to(dtype) for w in weights], segments,
                                    cuda[0], cuda[1], cuda[2], cuda[3], training, "fast",
                                    [u.cuda().to(dtype) for u in upstream], layout=layout)
    mean, var = (hr.mean(dim=(0, 2, 3)), hr.var(dim=(0, 2, 3), unbiased=False)) if training else bn64[2:]
    edge = boundary(hr, bn64[0], bn64[1], mean, var)  # dL/dh only: masks within fp32 rounding of 0
    for got, want in zip(gpu, ref):
        assert_matches(got, want, dtype, "output")
    names = ["grad h", "grad depthwise weight", "grad gamma", "grad beta"]
    for i, (got, want, name) in enumerate(zip(gpu_grads, ref_grads, names)):
        assert_matches(got, want, dtype, name, edge if i == 0 else None, fp32_tol=1e-4)
    for got, want, name in zip(gpu_grads[4:], ref_grads[4:], ["running mean", "running var"]):
        # fp32 buffers whatever h's dtype, updated from fp32 sums over N*H*W values
        assert_matches(got, want, torch.float32, name)
