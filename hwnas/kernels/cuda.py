"""The CUDA kernels, compiled at run time with NVRTC (hwnas.kernels.nvrtc) and launched with the
driver API on the tensor's device's current torch stream: users need no nvcc.

Modules are loaded once per device. Before loading or launching, the device's primary context
(the one torch's runtime calls use) is made current on the calling thread and the previous one
restored after: autograd runs the backward pass on a thread of its own, where no context may be
current, and a tensor may live on another device than the current one. Triton's launcher makes the
primary context current the same way. Status on GPUs: docs/gpu.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Iterator
from typing import Any

import torch

from hwnas.errors import HwnasError
from hwnas.kernels import nvrtc
from hwnas.kernels.nvrtc import bindings, cached_cubin, check
from hwnas.kernels.segments import CSegmentTable

ARCHS = ("sm_80", "sm_90")  # the GPUs hwnas compiles and checks its kernels for
OPS = ("forward", "grad_input", "grad_weight", "bn_backward")
# bn_coefficients works on the fp32 per-channel sums whatever the storage: one kernel
KERNELS = (*(f"mixed_dw_{op}_{t}" for op in OPS for t in ("f32", "f16", "bf16")), "mixed_dw_bn_coefficients_f32")
DTYPE_SUFFIX = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
THREADS = 256


@functools.lru_cache(maxsize=1)
def driver() -> Any:
    """cuda.bindings.driver, initialised (cuInit; fails where there is no NVIDIA driver)."""
    module = bindings("driver")
    try:
        result = module.cuInit(0)
    except Exception as exc:  # libcuda.so.1 not loadable: no NVIDIA driver
        raise HwnasError(f"the CUDA driver (libcuda) could not be loaded: {exc}; the CUDA kernels need an "
                         "NVIDIA GPU and its driver") from None
    check(result, "cuInit")
    return module


@functools.lru_cache(maxsize=None)
def primary_context(device_index: int) -> Any:
    """The device's primary context, retained once for the process (torch's runtime shares it)."""
    drv = driver()
    device = check(drv.cuDeviceGet(device_index), f"cuDeviceGet({device_index})")
    return check(drv.cuDevicePrimaryCtxRetain(device), f"cuDevicePrimaryCtxRetain({device_index})")


@contextlib.contextmanager
def current_context(device_index: int) -> Iterator[None]:
    """The device's primary context current on this thread while inside; the previous one after."""
    drv = driver()
    wanted = primary_context(device_index)
    previous = check(drv.cuCtxGetCurrent(), "cuCtxGetCurrent")
    switch = int(previous) != int(wanted)
    if switch:
        check(drv.cuCtxSetCurrent(wanted), "cuCtxSetCurrent")
    try:
        yield
    finally:
        if switch:
            check(drv.cuCtxSetCurrent(previous), "cuCtxSetCurrent")


@functools.lru_cache(maxsize=None)
def functions(device_index: int) -> dict[str, Any]:
    """The kernels loaded into the device's primary context; call it with that context current."""
    drv = driver()
    major, minor = torch.cuda.get_device_capability(device_index)
    arch = f"sm_{major}{minor}"
    image = cached_cubin(arch)
    try:
        module = check(drv.cuModuleLoadData(image), f"cuModuleLoadData({arch})")
    except HwnasError as exc:  # most often: a cubin of a newer NVRTC than the driver supports
        supports = check(drv.cuDriverGetVersion(), "cuDriverGetVersion")
        compiled_by = ".".join(map(str, nvrtc.version()))
        raise HwnasError(f"{exc}: the kernels were compiled by NVRTC {compiled_by}, the driver supports CUDA "
                         f"{supports // 1000}.{supports % 1000 // 10}; NVRTC must be of the driver's CUDA major "
                         f"version or older: {nvrtc.install_hint()}") from None
    return {name: check(drv.cuModuleGetFunction(module, name.encode()), f"cuModuleGetFunction({name})")
            for name in KERNELS}


class KernelArguments:
    """A kernel's arguments as cuLaunchKernel reads them (kernelParams): params[i] is the address
    of argument i's value, of the size and alignment of the kernel's parameter i. Keep the object
    alive until the launch returns: params points into values."""

    def __init__(self, values: list[Any]) -> None:
        self.values = values
        self.params = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])

    @property
    def address(self) -> int:
        return ctypes.addressof(self.params)


def pack_arguments(pointers: list[int], table: CSegmentTable, total: int | None) -> KernelArguments:
    """The arguments of every kernel of mixed_dw.cu: its pointers (0 is nullptr), the segment table
    by value, and for the forward kernel the number of outputs (a long long)."""
    values: list[Any] = [ctypes.c_void_p(p) for p in pointers] + [table]
    if total is not None:
        values.append(ctypes.c_longlong(total))
    return KernelArguments(values)


def grid_size(name: str, table: CSegmentTable, total: int | None) -> int:
    """Blocks of THREADS threads: one thread per output (forward, given `total`), per channel
    (bn_coefficients) or per input element, capped; the kernels loop over what a grid leaves."""
    work = total if total is not None else table.C if name == "bn_coefficients" else \
        table.N * table.C * table.H * table.W
    return min((work + THREADS - 1) // THREADS, 65535 * 8)


def launch(name: str, like: torch.Tensor, pointers: list[int], table: CSegmentTable, total: int | None,
           grid: int | None = None) -> None:
    """Launch mixed_dw_<name>_<dtype of like> on like's device, on that device's current torch
    stream (a 0 pointer is C's nullptr); grid: blocks, grid_size's by default."""
    index = like.device.index if like.device.index is not None else torch.cuda.current_device()
    args = pack_arguments(pointers, table, total)
    blocks = grid if grid is not None else grid_size(name, table, total)
    stream = torch.cuda.current_stream(index).cuda_stream
    with current_context(index):
        func = functions(index)[f"mixed_dw_{name}_{DTYPE_SUFFIX[like.dtype]}"]
        check(driver().cuLaunchKernel(func, blocks, 1, 1, THREADS, 1, 1, 0, stream, args.address, 0),
              f"cuLaunchKernel({name})")
