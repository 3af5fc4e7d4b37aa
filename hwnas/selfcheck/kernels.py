"""The mixed-depthwise kernels against PyTorch's own ops and autograd, on one device and dtype.

Every case runs, in the dtype on the device:
- the plain convolution: forward, grad-input, grad-weight;
- the BN1 + ReLU prologue (batch norm and ReLU applied on load) and its backward: outputs, dL/dh,
  dL/dweight, dL/dgamma, dL/dbeta and the running statistics, in training and in eval, with h
  as one tensor and as one tensor per segment (the two forms the fused layer hands the kernel;
  on the CPU the per-segment form writes dL/dh over h, as the layer does);
and the same computation in float64 on the CPU with torch's conv2d, batch_norm, relu and autograd,
from the same rounded inputs. tolerance.py says how close each quantity must be and why.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from hwnas.kernels.segments import SegmentSpec as S
from hwnas.kernels.segments import output_shapes
from hwnas.selfcheck.tolerance import Comparison, boundary, compare, rounded

DTYPES = {"cpu": (torch.float64, torch.float32), "cuda": (torch.float32, torch.float16, torch.bfloat16)}
EPS, MOMENTUM = 1e-5, 0.1


@dataclass(frozen=True)
class Case:
    name: str
    n: int
    h: int
    w: int
    segments: tuple[S, ...]

    @property
    def channels(self) -> list[int]:
        return [s.channels for s in self.segments]


# Shapes for the CUDA kernels' structure (256 threads a block, grid-stride loops, per-plane sums in
# shared memory, warp reductions over a weight tap's rows); every case mixes strides 1 and 2,
# kernel sizes and dilations over several segments.
CASES = (
    Case("20x20 planes, larger than a block", 4, 20, 20, (S(8, 3), S(6, 5, 1, 2), S(5, 7, 2, 1), S(4, 3, 3, 2),
                                                          S(3, 1))),
    Case("13x11 planes, blocks spanning 2-3 of them", 3, 13, 11, (S(5, 3, 1, 2), S(7, 5), S(2, 9, 1, 1),
                                                                  S(4, 1, 1, 2))),
    Case("1x1 planes, a block spanning 256 of them", 6, 1, 1, (S(24, 3), S(16, 5, 1, 2), S(8, 1))),
    Case("320 rows per weight tap, more than a block's threads", 20, 16, 16, (S(3, 3), S(2, 5, 1, 2),
                                                                              S(3, 7, 2, 1))),
)
# The fused layer's first-use check: small, crossing blocks and planes, a 1x1 segment (the CPU's
# fused BN2 runs as 1x1 segments of the same kernel).
FIRST_USE = Case("first use", 2, 9, 9, (S(4, 3), S(3, 5, 1, 2), S(2, 1)))


def _param_dtype(dtype: torch.dtype) -> torch.dtype:
    """Batch norm parameters and statistics: fp32 for fp32/fp16/bf16 storage, as the fused layer keeps them."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _grad(outputs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor],
          upstream: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(list(outputs), list(inputs), list(upstream)))


def plain(case: Case, device: torch.device, dtype: torch.dtype, seed: int = 0) -> list[Comparison]:
    """The convolution without prologue: forward, grad-input, grad-weight."""
    from hwnas.kernels.ops import mixed_depthwise, reference_mixed_depthwise

    gen = torch.Generator().manual_seed(seed)
    segs = list(case.segments)
    x = torch.randn(case.n, sum(case.channels), case.h, case.w, generator=gen)
    weights = [torch.randn(s.channels, s.kernel, s.kernel, generator=gen) for s in segs]
    upstream = [torch.randn(shape, generator=gen) for shape in output_shapes(x.shape, segs)]
    xd = x.to(device, dtype, copy=True).requires_grad_()
    wd = torch.cat([w.reshape(-1) for w in weights]).to(device, dtype).requires_grad_()
    outs = mixed_depthwise(xd, wd, segs)
    gx, gw = _grad(outs, [xd, wd], [u.to(device, dtype) for u in upstream])
    xr = rounded(x, dtype).requires_grad_()
    wr = [rounded(w, dtype).requires_grad_() for w in weights]
    refs = reference_mixed_depthwise(xr, wr, segs)
    rgx, *rgw = _grad(refs, [xr, *wr], [rounded(u, dtype) for u in upstream])
    where = f" [{case.name}]"
    return [*(compare(f"forward{where}", o, r, dtype) for o, r in zip(outs, refs)),
            compare(f"grad input{where}", gx, rgx, dtype, gradient=True),
            compare(f"grad weight{where}", gw, torch.cat([g.reshape(-1) for g in rgw]), dtype, gradient=True)]


def bn_relu(case: Case, device: torch.device, dtype: torch.dtype, training: bool, per_segment: bool,
            seed: int = 0, backward: bool = True) -> list[Comparison]:
    """The BN1 + ReLU prologue, forward and backward, against batch_norm + relu + conv2d."""
    from hwnas.kernels.ops import mixed_depthwise_bn_relu, reference_mixed_depthwise

    gen = torch.Generator().manual_seed(seed + 1)
    segs, pdt = list(case.segments), _param_dtype(dtype)
    h = torch.randn(case.n, sum(case.channels), case.h, case.w, generator=gen)
    weights = [torch.randn(s.channels, s.kernel, s.kernel, generator=gen) for s in segs]
    c = h.shape[1]
    gamma = (torch.rand(c, generator=gen) + 0.5).to(pdt)
    beta = (torch.randn(c, generator=gen) * 0.5).to(pdt)  # the ReLU cuts a real share
    mean = (torch.randn(c, generator=gen) * 0.1).to(pdt)
    var = (torch.rand(c, generator=gen) + 0.5).to(pdt)
    upstream = [torch.randn(shape, generator=gen) for shape in output_shapes(h.shape, segs)]

    hd = h.to(device, dtype, copy=True).requires_grad_()
    # per segment, on the CPU: intermediates whose dL/dh the backward writes over them (the layer's form)
    hs = [t.contiguous() * 1.0 for t in hd.split(case.channels, 1)] if per_segment else hd
    wd = torch.cat([w.reshape(-1) for w in weights]).to(device, dtype).requires_grad_()
    gd, bd = gamma.to(device, copy=True).requires_grad_(), beta.to(device, copy=True).requires_grad_()
    rm, rv = mean.to(device).clone(), var.to(device).clone()
    outs = mixed_depthwise_bn_relu(hs, wd, segs, gd, bd, rm, rv, training, MOMENTUM, EPS, "fast",
                                   overwrite_h=per_segment and backward)

    hr = rounded(h, dtype).requires_grad_()
    wr = [rounded(w, dtype).requires_grad_() for w in weights]
    gr, br = gamma.double().requires_grad_(), beta.double().requires_grad_()
    rmr, rvr = mean.double().clone(), var.double().clone()
    a = torch.relu(F.batch_norm(hr, rmr, rvr, gr, br, training, MOMENTUM, EPS))
    refs = reference_mixed_depthwise(a, wr, segs)

    where = f" [{case.name}, {'train' if training else 'eval'}, h {'per segment' if per_segment else 'whole'}]"
    found = [compare(f"bn-relu forward{where}", o, r, dtype) for o, r in zip(outs, refs)]
    if training:  # fp32 buffers (fp64 for fp64) updated from the batch's statistics
        found += [compare(f"running mean{where}", rm, rmr, pdt), compare(f"running var{where}", rv, rvr, pdt)]
    if not backward:
        return found
    got = _grad(outs, [hd, wd, gd, bd], [u.to(device, dtype) for u in upstream])
    rgh, *rest = _grad(refs, [hr, *wr, gr, br], [rounded(u, dtype) for u in upstream])
    rgw, rgg, rgb = torch.cat([g.reshape(-1) for g in rest[:-2]]), rest[-2], rest[-1]
    stats = (hr.mean(dim=(0, 2, 3)), hr.var(dim=(0, 2, 3), unbiased=False)) if training else (mean, var)
    edge = boundary(hr, gamma, beta, *stats) if dtype != torch.float64 else None
    return found + [compare(f"bn-relu grad h{where}", got[0], rgh, dtype, gradient=True, exclude=edge),
                    compare(f"bn-relu grad weight{where}", got[1], rgw, dtype, gradient=True),
                    compare(f"bn-relu grad gamma{where}", got[2], rgg, dtype, gradient=True),
                    compare(f"bn-relu grad beta{where}", got[3], rgb, dtype, gradient=True)]


@contextlib.contextmanager
def _grad_enabled(device: torch.device) -> Iterator[None]:
    """Gradients on whatever the caller's mode (a first use may come under no_grad or
    inference_mode), and no autocast."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        for device_type in dict.fromkeys(("cpu", device.type)):
            stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def check_kernels(device: torch.device, dtype: torch.dtype, cases: Sequence[Case] = CASES) -> list[Comparison]:
    """Every case: the plain convolution and the prologue in training and eval, h whole and per segment."""
    found: list[Comparison] = []
    with _grad_enabled(device):
        for i, case in enumerate(cases):
            found += plain(case, device, dtype, seed=i)
            for training in (True, False):
                for per_segment in (False, True):
                    found += bn_relu(case, device, dtype, training, per_segment, seed=i)
    return found


def first_use(device: torch.device, dtype: torch.dtype) -> list[Comparison]:
    """The fused layer's check on its first use on a device and dtype: the prologue's forward and
    backward in training, and its forward in eval, on a small problem, with h in the form the
    layer hands it there (per segment on the CPU, whole on GPUs)."""
    per_segment = device.type == "cpu"
    with _grad_enabled(device):
        return (bn_relu(FIRST_USE, device, dtype, True, per_segment)
                + bn_relu(FIRST_USE, device, dtype, False, per_segment, backward=False))
