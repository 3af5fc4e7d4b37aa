"""The CUDA kernels' launches, checked without a GPU.

1. The PTX check: for every kernel and dtype, the arguments hwnas packs for cuLaunchKernel
   (hwnas.kernels.cuda.pack_arguments, fed what the ops pass at each launch) against the .param
   declarations of that kernel in the PTX NVRTC emits: their count, and each one's size and
   alignment (the segment table is passed by value: a .b8 array of its size). The driver copies
   each kernelParams[i] with the size of parameter i, so a mismatch is a wrong kernel argument.
2. The real cuda-bindings driver layer (12.9 and 13.x, in clean virtual environments) driving
   hwnas's context, module and launch calls over a stand-in libcuda.so.1
   (tests/libcuda_standin/, which records what it receives: the values kernelParams points at,
   read with the PTX's parameter sizes), so the test shows what the real bindings hand a driver.

What neither can show: that a real driver and GPU accept the cubin and compute the right thing
(tests marked gpu in test_kernels.py; the kernels' logic on the CPU: test_cuda_emulation.py).
"""

from __future__ import annotations

import ctypes
import json
import re
import shutil
import subprocess
from dataclasses import dataclass

import pytest
import torch

from cuda_emulator import route_cuda_launches
from hwnas.kernels import SegmentSpec, mixed_depthwise, mixed_depthwise_bn_relu
from hwnas.kernels.cuda import ARCHS, DTYPE_SUFFIX, KERNELS, THREADS, KernelArguments, grid_size, pack_arguments
from hwnas.kernels.segments import MAX_SEGMENTS, CSegment, CSegmentTable
from isolated_venv import REPO, TORCH, cached_venv, clean_env, extra, project
from test_kernels import bn_inputs, inputs


def nvrtc_usable() -> bool:
    try:
        from hwnas.kernels import nvrtc

        nvrtc.version()
    except Exception:
        return False
    return True


needs_nvrtc = pytest.mark.skipif(not nvrtc_usable(), reason="cuda-bindings with NVRTC is not installed "
                                                            "(pip install 'hwnas[cuda13]')")


# --- the kernels' parameters, as the PTX declares them --------------------------------------


@dataclass(frozen=True)
class Param:
    size: int
    align: int


ENTRY = re.compile(r"\.entry\s+(\w+)\s*\(([^)]*)\)")
# .param [.align A] .<b|u|s|f><bits> [.ptr [.space] [.align N]] name[[count]]; a .ptr's .align is
# the pointee's, the leading .align the parameter's own (default: the element size)
PARAM = re.compile(r"\.param\s+(?:\.align\s+(\d+)\s+)?\.[busf](8|16|32|64)\s+(?:\.ptr(?:\s+\.\w+)*?"
                   r"(?:\s+\.align\s+\d+)?\s+)?(\w+)(?:\[(\d+)\])?")


def ptx_params(ptx: str) -> dict[str, list[Param]]:
    """Each .entry's parameters, in order."""
    kernels = {}
    for name, body in ENTRY.findall(ptx):
        params = []
        for align, bits, _, count in PARAM.findall(body):
            element = int(bits) // 8
            params.append(Param(element * int(count or 1), int(align or element)))
        assert len(params) == body.count(".param"), f"a .param of {name} not understood: {body}"
        kernels[name] = params
    return kernels


def mismatches(args: KernelArguments, params: list[Param]) -> list[str]:
    """How the packed arguments differ from the kernel's parameters (empty: they agree)."""
    if len(args.values) != len(params):
        return [f"{len(args.values)} arguments for {len(params)} parameters"]
    return [f"argument {i}: {ctypes.sizeof(v)} bytes aligned {ctypes.alignment(v)}, the kernel's "
            f"parameter {p.size} bytes aligned {p.align}"
            for i, (v, p) in enumerate(zip(args.values, params))
            if (ctypes.sizeof(v), ctypes.alignment(v)) != (p.size, p.align)]


@pytest.fixture(scope="session")
def ptx():
    """{arch: {kernel: [Param]}} of the PTX NVRTC emits for each supported architecture."""
    from hwnas.kernels.nvrtc import compile_ptx

    return {arch: ptx_params(compile_ptx(arch)[0].decode()) for arch in ARCHS}


# --- the launches hwnas makes ----------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    op: str
    pointers: list[int]
    table: CSegmentTable
    total: int | None
    grid: int | None


@pytest.fixture(scope="session")
def launches() -> dict[str, Launch]:
    """One launch of each CUDA kernel (by op), as the ops make them: the convolution forward and
    backward, then the batch norm prologue in training (the sums, the coefficients, dL/dh)."""
    made: dict[str, Launch] = {}

    def record(op, dtype, pointers, table, total, grid):
        made.setdefault(op, Launch(op, pointers, CSegmentTable.from_buffer_copy(table), total, grid))

    segments = [SegmentSpec(2, 3), SegmentSpec(1, 5, 2, 2)]
    x, weights = inputs(segments, n=2, h=6, w=5)
    flat = torch.cat([w.reshape(-1) for w in weights])
    with pytest.MonkeyPatch.context() as patch:
        route_cuda_launches(patch, record)  # records only: no kernel runs, the outputs stay empty
        outs = mixed_depthwise(x.requires_grad_(), flat.requires_grad_(), segments, "elementwise")
        sum(o.sum() for o in outs).backward()
        gamma, beta, mean, var = bn_inputs(3)
        outs = mixed_depthwise_bn_relu(x, flat, segments, gamma.requires_grad_(), beta, mean, var, True,
                                       impl="elementwise")
        sum(o.sum() for o in outs).backward()
    return made


def kernel_op(kernel: str) -> tuple[str, str]:
    """mixed_dw_<op>_<dtype suffix> -> (op, suffix)."""
    op, suffix = re.fullmatch(r"mixed_dw_(\w+)_(f32|f16|bf16)", kernel).groups()  # type: ignore[union-attr]
    return op, suffix


@needs_nvrtc
def test_the_ops_launch_every_kernel_the_ptx_has(ptx, launches):
    for arch in ARCHS:
        assert sorted(ptx[arch]) == sorted(KERNELS)
    assert sorted(launches) == sorted({kernel_op(k)[0] for k in KERNELS})


@needs_nvrtc
@pytest.mark.parametrize("kernel", KERNELS)
def test_packed_arguments_match_the_ptx_parameters(ptx, launches, kernel):
    launch = launches[kernel_op(kernel)[0]]
    args = pack_arguments(launch.pointers, launch.table, launch.total)
    for arch in ARCHS:
        assert mismatches(args, ptx[arch][kernel]) == [], f"{kernel} ({arch})"
    table = ptx[ARCHS[-1]][kernel][len(launch.pointers)]
    assert (table.size, table.align) == (ctypes.sizeof(CSegmentTable), 8)  # by value, whole


class ShortTable(ctypes.Structure):  # a table of one segment fewer than the kernels' struct
    _fields_ = [("count", ctypes.c_int), ("N", ctypes.c_int), ("C", ctypes.c_int), ("H", ctypes.c_int),
                ("W", ctypes.c_int), ("seg", CSegment * (MAX_SEGMENTS - 1))]


@needs_nvrtc
def test_mispacked_arguments_fail_the_check(ptx, launches):
    """Negative controls: the check fails on an int for the long long total, a missing pointer,
    an extra argument, and a segment table of another size."""
    forward = ptx[ARCHS[-1]]["mixed_dw_forward_f32"]
    launch = launches["forward"]
    good = pack_arguments(launch.pointers, launch.table, launch.total)
    int_total = KernelArguments([*good.values[:-1], ctypes.c_int(launch.total)])
    assert mismatches(int_total, forward) == ["argument 4: 4 bytes aligned 4, the kernel's parameter 8 bytes "
                                              "aligned 8"]
    assert mismatches(pack_arguments(launch.pointers[:-1], launch.table, launch.total), forward) == [
        "4 arguments for 5 parameters"]
    assert mismatches(KernelArguments([*good.values, ctypes.c_int(0)]), forward) == ["6 arguments for 5 parameters"]
    short = KernelArguments([*good.values[:3], ShortTable(), good.values[4]])
    assert mismatches(short, forward) == [f"argument 3: {ctypes.sizeof(ShortTable)} bytes aligned 8, the kernel's "
                                          f"parameter {ctypes.sizeof(CSegmentTable)} bytes aligned 8"]


def test_the_ptx_parser_reads_every_form_of_param():
    """The forms NVRTC writes: scalars, aligned byte arrays (structs by value), pointers with
    attributes (whose .align is the pointee's)."""
    ptx = """.visible .entry k(
        .param .u64 k_param_0,
        .param .align 8 .b8 k_param_1[2328],
        .param .u32 k_param_2,
        .param .u64 .ptr .global .align 16 k_param_3,
        .param .f64 k_param_4
    )"""
    assert ptx_params(ptx) == {"k": [Param(8, 8), Param(2328, 8), Param(4, 4), Param(8, 8), Param(8, 8)]}


# --- the real cuda-bindings over a stand-in libcuda.so.1 --------------------------------------

CC = shutil.which("gcc") or shutil.which("cc")
POINTER_BASE = 0x7F00_0000_0000  # launch i's pointer j: POINTER_BASE + 0x10000 i + 0x100 j (0 stays nullptr)
TOTAL = 0x1_2345_6789  # the forward's output count, past 32 bits: an argument packed in 32 bits shows
# (dtype, device, thread) per dtype: the f32 kernels on device 0 from the main thread, where device 0's
# context is current; f16 on device 1 (the launch switches contexts and back); bf16 on device 1 from a
# thread without a context, as autograd's backward
PLACES = {"f32": ("float32", 0, "main"), "f16": ("float16", 1, "main"), "bf16": ("bfloat16", 1, "worker")}
DRIVER_CALLS = ("cuInit", "cuDeviceGet", "cuDevicePrimaryCtxRetain", "cuCtxGetCurrent", "cuCtxSetCurrent",
                "cuModuleLoadData", "cuModuleGetFunction", "cuLaunchKernel", "cuDriverGetVersion")


@pytest.fixture(scope="session")
def standin_libcuda(tmp_path_factory):
    if CC is None:
        pytest.skip("no C compiler (gcc) on PATH: the stand-in libcuda.so.1 is built from C")
    folder = tmp_path_factory.mktemp("libcuda")
    subprocess.run([CC, "-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-Wl,-soname,libcuda.so.1",
                    str(REPO / "tests" / "libcuda_standin" / "libcuda.c"), "-o", str(folder / "libcuda.so.1"),
                    "-lpthread"], check=True)
    return folder / "libcuda.so.1"


def job_launches(launches: dict[str, Launch]) -> list[dict]:
    """Every kernel once (in KERNELS' order), with recognisable pointers, placed as PLACES says."""
    out = []
    for i, kernel in enumerate(KERNELS):
        op, suffix = kernel_op(kernel)
        launch = launches[op]
        dtype, device, thread = PLACES[suffix]
        out.append({"kernel": kernel, "op": op, "dtype": dtype, "device": device, "thread": thread,
                    "pointers": [POINTER_BASE + 0x10000 * i + 0x100 * j if p else 0
                                 for j, p in enumerate(launch.pointers)],
                    "table": bytes(launch.table).hex(), "total": None if launch.total is None else TOTAL + i,
                    "grid": launch.grid})
    return out


def log_fields(line: str) -> dict[str, str]:
    return dict(field.split("=", 1) for field in line.split()[1:] if "=" in field)


@pytest.mark.slow
@needs_nvrtc
@pytest.mark.parametrize("major", [12, 13])
def test_real_cuda_bindings_marshal_hwnas_launches(major, standin_libcuda, ptx, launches, tmp_path):
    python = cached_venv(f"cuda{major}", [TORCH, *project()["dependencies"], *extra(f"cuda{major}")])
    specs = job_launches(launches)
    job = {"libcuda": str(standin_libcuda), "launches": specs,
           "layouts": {k: [p.size for p in params] for k, params in ptx[ARCHS[-1]].items()}}
    (tmp_path / "job.json").write_text(json.dumps(job))
    proc = subprocess.run([str(python), str(REPO / "tests" / "drive_cuda_bindings.py"), str(tmp_path / "job.json")],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env=clean_env(PYTHONPATH=str(REPO), LD_LIBRARY_PATH=str(standin_libcuda.parent),
                                        HWNAS_CACHE=str(tmp_path / "cache")))
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)
    assert result["cuda_bindings"].split(".")[0] == str(major)
    log = result["log"].splitlines()

    # cuda-bindings found each driver function hwnas calls through cuGetProcAddress
    resolved = {line.split()[1] for line in log if line.startswith("cuGetProcAddress ")}
    assert set(DRIVER_CALLS) <= resolved

    # one module per device, loaded in that device's primary context
    loads = [log_fields(line) for line in log if line.startswith("cuModuleLoadData")]
    assert [load["current"] for load in loads] == ["ctx0", "ctx1", "ctx2"]
    assert {line.split("name=")[1] for line in log if line.startswith("cuModuleGetFunction")} == set(KERNELS)

    # each launch: the kernel, grid, block and stream hwnas chose, in its device's context, and
    # the argument values the driver reads through kernelParams with the PTX's parameter sizes
    launched = [log_fields(line) for line in log if line.startswith("cuLaunchKernel")]
    assert len(launched) == len(specs)
    for spec, got, seen in zip(specs, launched, result["launches"]):
        context = f"ctx{spec['device']}"
        table = CSegmentTable.from_buffer_copy(bytes.fromhex(spec["table"]))
        grid = spec["grid"] if spec["grid"] is not None else grid_size(spec["op"], table, spec["total"])
        assert "error" not in seen, seen
        assert (got["function"], got["module_context"], got["current"]) == (spec["kernel"], context, context)
        assert (got["grid"], got["block"], got["shared"]) == (f"{grid},1,1", f"{THREADS},1,1", "0")
        assert (got["stream"], got["extra"]) == (str(0x5000 + spec["device"]), "0")
        want = [p.to_bytes(8, "little").hex() for p in spec["pointers"]] + [spec["table"]]
        if spec["total"] is not None:
            want.append(spec["total"].to_bytes(8, "little", signed=True).hex())
        assert got["params"].split(",") == want, spec["kernel"]
        # the caller's context is current again: device 0's on the main thread, none on a new thread
        assert seen["before"] == seen["after"] == ("ctx0" if spec["thread"] == "main" else "none")
    assert result["current_at_end"] == "ctx0"

    assert re.search(r"cuModuleLoadData\(sm_90\) failed \(.*222.*\): the kernels were compiled by NVRTC \d+\.\d+, "
                     r"the driver supports CUDA 12\.8", result["refused"]), result["refused"]


def test_the_dtype_suffixes_cover_the_kernels():
    assert {kernel_op(k)[1] for k in KERNELS} == set(DTYPE_SUFFIX.values()) == set(PLACES)
