"""The CUDA kernels' block-level logic, run on the CPU: kernels/mixed_dw.cu compiled as host C++
under a test-only emulation of CUDA's execution model (tests/cuda_emulation/, driven by
tests/cuda_emulator.py), launched by hwnas's own ops with hwnas's own argument packing and
grids, and compared with torch.

This checks what the CPU twin does not share with the CUDA kernels: their thread indexing and
grid-stride loops, grad_input's per-plane sums in shared memory and the barriers around them,
grad_weight's warp-shuffle and shared-memory reduction, the launches of bn_coefficients and
bn_backward, and the fp16/bf16 loads and stores. Every comparison runs with the threads between
barriers in three orders (forward, reverse, shuffled), so that a missing barrier changes a result;
mutated kernels (a barrier removed, a wrong shuffle offset, a grid-stride loop that skips work)
must fail. What it cannot show: a weakly ordered memory, data races between threads (a thread
runs undisturbed between barriers here), the speed, or what NVRTC makes of the code.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import pytest
import torch

from cuda_emulator import ORDERS, EmulationError, Emulator, compile_emulation, route_cuda_launches
from hwnas.kernels import SegmentSpec, mixed_depthwise, reference_mixed_depthwise
from hwnas.kernels.segments import output_shapes, segment_table
from hwnas.kernels.sources import source_dir
from low_precision import boundary
from test_kernels import bn_inputs, inputs, run_bn_relu

# Shapes that cross the kernels' block and plane boundaries (blocks of 256 threads); each is
# (batch, height, width, segments). Segment: channels, kernel, dilation, stride.
SHAPES = {
    # planes of one value: a block's 256 threads cover 256 (n, c) planes of grad_input's sums
    "planes_1x1": (40, 1, 1, [SegmentSpec(8, 3), SegmentSpec(6, 5, 2, 2), SegmentSpec(2, 1)]),
    # planes of 143 values: blocks start in the middle of a plane and span two or three
    "planes_astride_blocks": (2, 13, 11, [SegmentSpec(3, 3), SegmentSpec(2, 5, 2, 2), SegmentSpec(2, 7),
                                          SegmentSpec(1, 1), SegmentSpec(1, 3, 3, 2)]),
    # planes of 323 values: a plane is more than a block
    "planes_beyond_blocks": (2, 17, 19, [SegmentSpec(2, 3, 1, 2), SegmentSpec(2, 5)]),
    # 280 rows (n, oy) per weight tap: grad_weight's threads loop over more rows than they are
    "rows_beyond_threads": (2, 140, 3, [SegmentSpec(2, 3), SegmentSpec(1, 5, 2, 1), SegmentSpec(1, 3, 1, 2)]),
}
GRIDS = {"full": None, "cut": 2}  # cut: at most 2 blocks, the grid-stride kernels loop over the rest


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """torch's references on these small tensors: threads only contend for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cuda-emulation")


@pytest.fixture(scope="session")
def emulator(build_dir):
    return Emulator(compile_emulation(build_dir, source_dir()), source_dir())


@pytest.fixture
def on_emulated_gpu(monkeypatch):
    """route(emulator, order, max_grid): the ops' CUDA launches go to the emulator meanwhile."""

    def route(emulator: Emulator, order: str, max_grid: int | None) -> Emulator:
        emulator.order, emulator.seed, emulator.max_grid = order, 7, max_grid
        emulator.launches = []
        route_cuda_launches(monkeypatch, emulator.launch)
        return emulator

    return route


def differences(pairs, rtol: float, atol: float) -> list[str]:
    """The names of the (name, got, want[, excluded]) whose values differ beyond rtol/atol."""
    out = []
    for name, got, want, *excluded in pairs:
        bad = ~((got.double() - want.double()).abs() <= atol + rtol * want.double().abs())  # NaN: bad
        if excluded:
            bad &= ~excluded[0]
        if bad.any():
            out.append(f"{name}: {int(bad.sum())} of {bad.numel()}")
    return out


def conv_differences(shape: str) -> list[str]:
    """mixed_depthwise forward, grad input and grad weight (no prologue) against torch."""
    n, h, w, segments = SHAPES[shape]
    x, weights = inputs(segments, n=n, h=h, w=w, seed=1)
    flat = torch.cat([t.reshape(-1) for t in weights]).requires_grad_()
    x1 = x.clone().requires_grad_()
    outs = mixed_depthwise(x1, flat, segments, "elementwise")
    upstream = [torch.randn(o.shape, generator=torch.Generator().manual_seed(2)) for o in outs]
    sum((o * u).sum() for o, u in zip(outs, upstream)).backward()
    x2 = x.clone().requires_grad_()
    ws = [t.clone().requires_grad_() for t in weights]
    refs = reference_mixed_depthwise(x2, ws, segments)
    sum((o * u).sum() for o, u in zip(refs, upstream)).backward()
    pairs = [(f"output {i}", o, r.detach()) for i, (o, r) in enumerate(zip(outs, refs))]
    pairs += [("grad input", x1.grad, x2.grad), ("grad weight", flat.grad, torch.cat([t.grad.reshape(-1) for t in ws]))]
    return differences(pairs, rtol=1e-4, atol=1e-4)


def bn_relu_differences(shape: str, training: bool, layout: str = "concatenated") -> list[str]:
    """mixed_depthwise_bn_relu forward and backward (grad_input's sums, bn_coefficients,
    bn_backward) against torch's batch_norm + relu + conv2d and autograd."""
    n, h, w, segments = SHAPES[shape]
    x, weights = inputs(segments, n=n, h=h, w=w, seed=3)
    bn = bn_inputs(x.shape[1], seed=3)
    ours, our_grads, upstream = run_bn_relu(x, weights, segments, *bn, training, "elementwise", layout=layout)
    refs, ref_grads, _ = run_bn_relu(x, weights, segments, *bn, training, "elementwise", upstream, fused=False)
    stats = (x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)) if training else bn[2:]
    edge = boundary(x, bn[0], bn[1], *stats)  # dL/dh where z is within fp32 rounding of the ReLU's 0
    pairs = [(f"output {i}", o, r.detach()) for i, (o, r) in enumerate(zip(ours, refs))]
    names = ["grad h", "grad depthwise weight", "grad gamma", "grad beta", "running mean", "running var"]
    pairs += [(name, got, want, *([edge] if name == "grad h" else []))
              for name, got, want in zip(names, our_grads, ref_grads)]
    return differences(pairs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("shape", SHAPES)
def test_convolution_and_its_gradients_match_torch(emulator, on_emulated_gpu, shape, order, grid):
    route = on_emulated_gpu(emulator, order, GRIDS[grid])
    assert conv_differences(shape) == []
    assert {kernel for kernel, _, _ in route.launches} == {"mixed_dw_forward_f32", "mixed_dw_grad_input_f32",
                                                           "mixed_dw_grad_weight_f32"}
    if grid == "cut":  # every shape has more work than two blocks of threads
        assert all(blocks < full for kernel, blocks, full in route.launches if "grad_weight" not in kernel)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("shape", SHAPES)
def test_bn_relu_prologue_and_its_backward_match_torch(emulator, on_emulated_gpu, shape, order, training):
    route = on_emulated_gpu(emulator, order, None)
    assert bn_relu_differences(shape, training) == []
    assert {k for k, _, _ in route.launches} == {f"mixed_dw_{op}_f32" for op in (
        "forward", "grad_input", "grad_weight", "bn_coefficients", "bn_backward")}


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("shape", ["planes_1x1", "planes_beyond_blocks"])
def test_bn_relu_with_grids_smaller_than_the_work(emulator, on_emulated_gpu, shape, order):
    """Two blocks for all the work: grad_input's blocks go round its loop, each time at a new
    plane offset, zeroing and flushing their shared sums each time."""
    route = on_emulated_gpu(emulator, order, GRIDS["cut"])
    assert bn_relu_differences(shape, True, layout="per_segment") == []
    assert all(blocks < full for kernel, blocks, full in route.launches if "grad_input" in kernel)


# --- fp16 and bf16 storage --------------------------------------------------------------------


def run_kernels(emulator: Emulator, x, weight, upstream, segments, scale, shift, mean, coef):
    """Each kernel once, launched as the ops launch them: forward and grad_weight with the
    prologue, grad_input with its sums, bn_backward over grad_input's result."""
    ys = [x.new_empty(s) for s in output_shapes(x.shape, segments)]
    table, total = segment_table([x], segments, ys)
    emulator.launch("forward", x.dtype, [weight.data_ptr(), scale.data_ptr(), shift.data_ptr()], table, total, None)
    table, _ = segment_table([x], segments, upstream)
    gx, sums, gw = torch.empty_like(x), torch.zeros(x.shape[1], 2), torch.empty_like(weight)
    emulator.launch("grad_input", x.dtype, [weight.data_ptr(), gx.data_ptr(), scale.data_ptr(), shift.data_ptr(),
                                            mean.data_ptr(), sums.data_ptr()], table, None, None)
    emulator.launch("grad_weight", x.dtype, [gw.data_ptr(), scale.data_ptr(), shift.data_ptr()], table, None,
                    weight.numel())
    gh = gx.clone()
    emulator.launch("bn_backward", x.dtype, [gh.data_ptr(), coef.data_ptr()], table, None, None)
    return ys, gx, sums, gw, gh


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_storage_rounds_the_fp32_results_once(emulator, dtype):
    """Accumulation is fp32 whatever the storage, so an fp16/bf16 kernel's result is the fp32
    kernel's on the same (rounded) inputs, rounded once by torch: exactly, value for value.
    bn_backward reads grad_input's stored result: its fp32 run gets the same rounded one."""
    emulator.order, emulator.max_grid = "shuffled", None
    n, h, w, segments = SHAPES["planes_astride_blocks"]
    x, weights = inputs(segments, n=n, h=h, w=w, seed=5)
    gen = torch.Generator().manual_seed(6)
    upstream = [torch.randn(s, generator=gen) for s in output_shapes(x.shape, segments)]
    c = x.shape[1]
    scale, shift, mean = torch.rand(c, generator=gen) + 0.5, torch.randn(c, generator=gen), torch.randn(c, generator=gen)
    coef = torch.randn(c, 3, generator=gen)
    flat = torch.cat([t.reshape(-1) for t in weights])
    low = run_kernels(emulator, x.to(dtype), flat.to(dtype), [u.to(dtype) for u in upstream], segments, scale, shift,
                      mean, coef)
    wide = run_kernels(emulator, x.to(dtype).float(), flat.to(dtype).float(), [u.to(dtype).float() for u in upstream],
                       segments, scale, shift, mean, coef)
    for got, want in zip(low[0], wide[0]):
        assert torch.equal(got, want.to(dtype))
    assert torch.equal(low[1], wide[1].to(dtype))  # grad input, masked by the ReLU
    assert torch.equal(low[2], wide[2])  # its fp32 sums, from the unrounded values
    assert torch.equal(low[3], wide[3].to(dtype))  # grad weight
    gh, h = low[1].float(), x.to(dtype).float()  # (the table holds addresses: keep the tensors)
    table, _ = segment_table([h], segments, upstream)
    emulator.launch("bn_backward", torch.float32, [gh.data_ptr(), coef.data_ptr()], table, None, None)
    assert torch.equal(low[4], gh.to(dtype))
    assert low[4].abs().max() > 0 and low[3].abs().max() > 0


# --- negative controls: the mutated kernels must fail ----------------------------------------



@dataclass(frozen=True)
class Mutation:
    original: str  # text of kernels/mixed_dw.cu, found exactly once
    replacement: str
    check: str  # "conv" (conv_differences) or "bn_relu" (bn_relu_differences, training)
    caught_by: tuple[str, ...]  # the runs (order/grid) that must catch it; the others may


MUTATIONS = {
    # without the barrier a thread may add to a slot its owner zeroes later: a later thread's slot
    "grad_input adds to its shared plane sums before they are all zeroed": Mutation(
        "= 0.f;\n      __syncthreads();", "= 0.f;", "bn_relu", ("reverse/full", "shuffled/full")),
    # ... or flush its slot before later threads have added to it
    "grad_input flushes its shared plane sums before every thread has added to them": Mutation(
        "__syncthreads();\n      const hwnas_index p = first_plane", "const hwnas_index p = first_plane", "bn_relu",
        ("forward/full", "shuffled/full")),
    "grad_weight's first warp reads the warps' sums before they are all written": Mutation(
        "warp_sums[threadIdx.x >> 5] = acc;\n  __syncthreads();", "warp_sums[threadIdx.x >> 5] = acc;", "conv",
        ("forward/full", "shuffled/full")),
    "grad_weight's warp reduction starts at offset 8 (half the warp)": Mutation(
        "for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, offset);\n"
        "  __shared__", "for (int offset = 8; offset > 0; offset >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, "
        "offset);\n  __shared__", "conv", ("forward/full", "reverse/full", "shuffled/full")),
    # only a grid smaller than the work goes round the loop
    "forward's grid-stride loop steps over every other grid": Mutation(
        "i += (hwnas_index)gridDim.x * blockDim.x) {\n    const Segment& s", "i += 2 * (hwnas_index)gridDim.x * "
        "blockDim.x) {\n    const Segment& s", "conv", ("forward/cut", "reverse/cut", "shuffled/cut")),
}


@pytest.fixture(scope="session")
def mutants(build_dir):
    """The emulation library of each mutation of the kernel source, built when first asked for."""
    built: dict[str, Emulator] = {}

    def get(name: str) -> Emulator:
        if name not in built:
            mutation = MUTATIONS[name]
            source = (source_dir() / "mixed_dw.cu").read_text()
            assert source.count(mutation.original) == 1, f"the mutation '{name}' no longer fits kernels/mixed_dw.cu"
            folder = build_dir / f"mutant-{len(built)}"
            folder.mkdir()
            (folder / "mixed_dw.cu").write_text(source.replace(mutation.original, mutation.replacement))
            (folder / "mixed_dw.h").write_text((source_dir() / "mixed_dw.h").read_text())
            built[name] = Emulator(compile_emulation(build_dir, folder), folder)
        return built[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("mutation", MUTATIONS)
def test_mutated_kernels_fail(mutants, on_emulated_gpu, mutation):
    """Each mutation is caught, in the runs (thread order / grid) it names: a barrier missing
    shows in some orders of the threads only, a grid-stride loop's error with a cut grid only."""
    check = MUTATIONS[mutation].check
    caught = {}
    for grid in GRIDS:
        for order in ORDERS:
            on_emulated_gpu(mutants(mutation), order, GRIDS[grid])
            try:
                found = bn_relu_differences("planes_astride_blocks", True) if check == "bn_relu" else \
                    conv_differences("planes_astride_blocks")
            except EmulationError as exc:
                found = [str(exc)]
            if found:
                caught[f"{order}/{grid}"] = found[0]
    missed = set(MUTATIONS[mutation].caught_by) - set(caught)
    assert not missed, f"'{mutation}' not caught in {sorted(missed)} (caught: {caught})"


# --- the emulation's own rules --------------------------------------------------------------


def floats(count: int):
    return (ctypes.c_float * count)()


@pytest.mark.parametrize("order", ORDERS)
def test_a_missing_barrier_shows_in_some_order(emulator, order):
    """Each thread writes its shared slot and reads its neighbour's: right with the barrier in every
    order; without it wrong, the neighbour's slot not yet written (NaN, or its previous block's value)."""
    emulator.order = order
    want = [float(b * 1000 + (t + 1) % 64) for b in range(3) for t in range(64)]
    results = {}
    for barrier in (1, 0):
        out = floats(3 * 64)
        emulator.run("emulation_neighbour", 3, 64, [ctypes.c_void_p(ctypes.addressof(out)), ctypes.c_int(barrier)])
        results[barrier] = list(out)
    assert results[1] == want
    assert results[0] != want


@pytest.mark.parametrize("delta,width", [(1, 32), (16, 32), (3, 8), (0, 32), (5, 4)])
def test_warp_shuffles_read_the_lane_delta_above(emulator, delta, width):
    out = floats(96)
    emulator.run("emulation_shuffle_down", 1, 96, [ctypes.c_void_p(ctypes.addressof(out)), ctypes.c_int(delta),
                                                   ctypes.c_int(width)])
    want = []
    for t in range(96):
        lane = t % 32
        want.append(float(t + delta if lane % width + delta < width else t))
    assert list(out) == want


@pytest.mark.parametrize("kernel,message", [
    ("emulation_exit_before_barrier", "wait at __syncthreads while 1 have exited"),
    ("emulation_lane_skips_shuffle", "deadlock: thread 0 at a shuffle"),
])
def test_broken_execution_rules_are_reported(emulator, kernel, message):
    out = floats(64)
    with pytest.raises(EmulationError, match=message):
        emulator.run(kernel, 1, 64, [ctypes.c_void_p(ctypes.addressof(out))])
    emulator.run("emulation_neighbour", 1, 64, [ctypes.c_void_p(ctypes.addressof(out)), ctypes.c_int(1)])


def test_a_launch_with_an_argument_missing_is_refused(emulator):
    """The emulated kernels take their arguments as cuLaunchKernel does: one address per argument."""
    with pytest.raises(EmulationError, match="mixed_dw_forward_f32 takes 5 arguments, given 4"):
        emulator.run("mixed_dw_forward_f32", 1, 256, [ctypes.c_void_p(0)] * 4)
