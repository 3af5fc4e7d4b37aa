"""The CUDA kernels, compiled at run time with NVRTC (cuda-python) and launched with the
driver API on torch's current stream: users need no nvcc.

Cubins are cached per GPU architecture and source hash. `compile_cubin(arch)` needs no GPU,
which is how the tests compile for sm_80 and sm_90 on machines that have none. What has run on
which GPU: docs/gpu.md.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
from typing import Any

import torch

from hwnas.errors import HwnasError, require
from hwnas.kernels.cpu import cache_dir
from hwnas.kernels.segments import SOURCE_DIR, CSegmentTable

SOURCES = ("mixed_dw.h", "mixed_dw.cu")
ARCHS = ("sm_80", "sm_90")  # the GPUs hwnas compiles and checks its kernels for
OPS = ("forward", "grad_input", "grad_weight", "bn_backward")
# bn_coefficients works on the fp32 per-channel sums whatever the storage: one kernel
KERNELS = (*(f"mixed_dw_{op}_{t}" for op in OPS for t in ("f32", "f16", "bf16")), "mixed_dw_bn_coefficients_f32")
DTYPE_SUFFIX = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
THREADS = 256


def _nvrtc() -> Any:
    bindings = require("cuda.bindings.nvrtc", "gpu", "Compiling the CUDA kernels at run time")
    return bindings


def _check(result: Any, what: str, log: str = "") -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise HwnasError(f"{what} failed ({err}){': ' + log if log else ''}")
    return rest[0] if len(rest) == 1 else rest


def _nvrtc_include_dirs() -> list[str]:
    """Where cuda_fp16.h / cuda_bf16.h are, for NVRTC: the CUDA runtime wheel's headers or a toolkit."""
    import importlib.util
    from pathlib import Path

    dirs = []
    for pkg in ("nvidia.cuda_runtime", "nvidia.cuda_nvrtc"):
        try:
            spec = importlib.util.find_spec(pkg)
        except ModuleNotFoundError:
            spec = None
        if spec and spec.submodule_search_locations:
            for loc in spec.submodule_search_locations:
                if (Path(loc) / "include").is_dir():
                    dirs.append(str(Path(loc) / "include"))
    for toolkit in ("/usr/local/cuda/include",):
        if Path(toolkit).is_dir():
            dirs.append(toolkit)
    return dirs


def compile_cubin(arch: str) -> tuple[bytes, str]:
    """Cubin of mixed_dw.cu for `arch` (e.g. 'sm_90') and NVRTC's log; no GPU needed."""
    nvrtc = _nvrtc()
    source = (SOURCE_DIR / "mixed_dw.cu").read_text()
    header = (SOURCE_DIR / "mixed_dw.h").read_bytes()
    prog = _check(nvrtc.nvrtcCreateProgram(source.encode(), b"mixed_dw.cu", 1, [header], [b"mixed_dw.h"]),
                  "nvrtcCreateProgram")
    opts = [f"--gpu-architecture={arch}".encode(), b"-std=c++17", b"-default-device",
            *[f"-I{d}".encode() for d in _nvrtc_include_dirs()]]
    result = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
    size = _check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
    log = b" " * size
    nvrtc.nvrtcGetProgramLog(prog, log)
    log_text = log.decode(errors="replace").strip("\x00 \n")
    _check(result, f"NVRTC compilation of mixed_dw.cu for {arch}", log_text)
    size = _check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
    cubin = b" " * size
    _check(nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
    nvrtc.nvrtcDestroyProgram(prog)
    return bytes(cubin), log_text


def cached_cubin(arch: str) -> bytes:
    texts = [(SOURCE_DIR / name).read_bytes() for name in SOURCES]
    key = hashlib.sha256(b"\0".join([*texts, arch.encode()])).hexdigest()[:16]
    path = cache_dir() / f"mixed_dw-{arch}-{key}.cubin"
    if path.exists():
        return path.read_bytes()
    cubin, _ = compile_cubin(arch)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cubin)
    return cubin


@functools.lru_cache(maxsize=8)
def _functions(device_index: int) -> dict[str, Any]:
    driver = require("cuda.bindings.driver", "gpu", "Launching the CUDA kernels")
    major, minor = torch.cuda.get_device_capability(device_index)
    torch.cuda.init()  # torch creates the primary context the driver API then uses
    module = _check(driver.cuModuleLoadData(cached_cubin(f"sm_{major}{minor}")), "cuModuleLoadData")
    return {name: _check(driver.cuModuleGetFunction(module, name.encode()), f"cuModuleGetFunction({name})")
            for name in KERNELS}


def launch(name: str, dtype: torch.dtype, pointers: list[int], table: CSegmentTable, total: int | None,
           grid: int | None = None) -> None:
    """Launch mixed_dw_<name>_<dtype> on torch's current stream (a 0 pointer is C's nullptr)."""
    driver = require("cuda.bindings.driver", "gpu", "Launching the CUDA kernels")
    func = _functions(torch.cuda.current_device())[f"mixed_dw_{name}_{DTYPE_SUFFIX[dtype]}"]
    args: list[Any] = [ctypes.c_void_p(p) for p in pointers] + [table]
    if total is not None:
        args.append(ctypes.c_longlong(total))
    params = (ctypes.c_void_p * len(args))(*[ctypes.addressof(a) for a in args])
    if grid is None:  # one thread per output, per channel (bn_coefficients) or per input element
        work = total if total is not None else table.C if name == "bn_coefficients" else \
            table.N * table.C * table.H * table.W
        grid = min((work + THREADS - 1) // THREADS, 65535 * 8)
    stream = torch.cuda.current_stream().cuda_stream
    _check(driver.cuLaunchKernel(func, grid, 1, 1, THREADS, 1, 1, 0, stream, ctypes.addressof(params), 0),
           f"cuLaunchKernel({name})")
