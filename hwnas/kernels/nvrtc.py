"""NVRTC, the run-time CUDA compiler users build the kernels with (no nvcc needed).

Loads NVRTC through cuda-bindings, finds the CUDA headers it needs (cuda_fp16.h, cuda_bf16.h)
the way NVIDIA's own packages do, and compiles kernels/mixed_dw.cu into a cubin for a GPU
architecture. Compiling needs no GPU. Every failure (bindings missing, libnvrtc not loadable,
headers not found, compile error) is an HwnasError that says what to install.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hwnas.errors import HwnasError
from hwnas.kernels.sources import source_dir

SOURCES = ("mixed_dw.h", "mixed_dw.cu")  # what the CUDA kernels are compiled from
HEADER = "cuda_fp16.h"  # the CUDA header the kernels include (cuda_bf16.h sits beside it)
# Where CUDA's wheels put their headers, per CUDA major: CUDA 13 wheels share one nvidia/cu13
# tree; CUDA 12 wheels have one folder per component (nvidia-cuda-runtime-cu12 has the fp16 headers).
WHEEL_INCLUDE_DIRS = {13: ("nvidia", "cu13", "include"), 12: ("nvidia", "cuda_runtime", "include")}
SYSTEM_TOOLKIT = Path("/usr/local/cuda")


def install_hint() -> str:
    """The pip command that installs NVRTC and cuda-bindings of torch's CUDA major version."""
    try:
        import torch

        cuda = torch.version.cuda
    except ImportError:
        cuda = None
    major = cuda.split(".")[0] if cuda else None
    if major == "12":
        return "pip install 'hwnas[cuda12]' (torch is built for CUDA 12)"
    if major == "13":
        return "pip install 'hwnas[cuda13]' (torch is built for CUDA 13)"
    return "pip install 'hwnas[cuda13]' (or 'hwnas[cuda12]': the CUDA major version of your torch and driver)"


def bindings(module: str) -> Any:
    """cuda.bindings.<module> ('nvrtc' or 'driver'), or an HwnasError naming what to install."""
    import importlib

    try:
        return importlib.import_module(f"cuda.bindings.{module}")
    except ImportError as exc:
        raise HwnasError(f"the CUDA kernels need cuda-bindings (CUDA Python), which cannot be imported "
                         f"({exc}); install it with: {install_hint()}") from None


def check(result: Any, what: str, log: str = "") -> Any:
    """The value(s) of a cuda-bindings call, which returns (error, values...); raises on an error."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise HwnasError(f"{what} failed ({err}){': ' + log if log else ''}")
    return rest[0] if len(rest) == 1 else rest


@functools.lru_cache(maxsize=1)
def nvrtc() -> Any:
    """cuda.bindings.nvrtc with libnvrtc loaded (cuda-bindings loads it on the first call)."""
    module = bindings("nvrtc")
    try:
        result = module.nvrtcVersion()
    except Exception as exc:  # dlopen failure: RuntimeError, or cuda.pathfinder's DynamicLibNotFoundError
        raise HwnasError(f"NVRTC (libnvrtc) could not be loaded: {exc}; install NVRTC of torch's CUDA major "
                         f"version: {install_hint()}") from None
    check(result, "nvrtcVersion")
    return module


def version() -> tuple[int, int]:
    major, minor = check(nvrtc().nvrtcVersion(), "nvrtcVersion")
    return int(major), int(minor)


def library_path() -> str | None:
    """The libnvrtc file this process loaded (read from the process's memory map), None if unknown."""
    nvrtc()
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if "libnvrtc.so" in path or "libnvrtc.alt.so" in path:
                    return path
    except OSError:
        pass
    return None


@dataclass(frozen=True)
class HeaderDir:
    path: str
    found_via: str  # cuda-pathfinder, CUDA_PATH, CUDA_HOME, wheel (CUDA 13), wheel (CUDA 12), /usr/local/cuda
    cuda_version: str | None  # CUDART_VERSION of its cuda_runtime_api.h, as 'major.minor'


def _header_version(folder: Path) -> str | None:
    try:
        text = (folder / "cuda_runtime_api.h").read_text(errors="replace")
    except OSError:
        return None
    found = re.search(r"#define\s+CUDART_VERSION\s+(\d+)", text)
    return f"{int(found.group(1)) // 1000}.{int(found.group(1)) % 1000 // 10}" if found else None


def header_candidates() -> list[tuple[str, str]]:
    """(folder, how it was found) for every place the CUDA headers may be, in search order:
    cuda-pathfinder (NVIDIA's own search: wheels, conda, CUDA_PATH/CUDA_HOME, the toolkit), the
    CUDA_PATH and CUDA_HOME variables, the wheel layouts of CUDA 13 and 12 on sys.path, /usr/local/cuda."""
    places: list[tuple[str, str]] = []
    try:
        from cuda.pathfinder import locate_nvidia_header_directory
    except ImportError:
        pass
    else:
        try:
            located = locate_nvidia_header_directory("cudart")
        except Exception:  # an old or broken pathfinder must not hide the other places
            located = None
        if located is not None and located.abs_path:
            places.append((located.abs_path, f"cuda-pathfinder ({located.found_via})"))
    for var in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(var):
            places.append((str(Path(os.environ[var]) / "include"), var))
    for major, parts in WHEEL_INCLUDE_DIRS.items():
        for entry in sys.path:
            if entry and Path(entry).is_dir():
                places.append((str(Path(entry).joinpath(*parts)), f"wheel (CUDA {major})"))
    places.append((str(SYSTEM_TOOLKIT / "include"), str(SYSTEM_TOOLKIT)))
    return places


def find_headers(nvrtc_major: int | None = None) -> HeaderDir:
    """The folder of the CUDA headers to compile with: the first found whose CUDA major version is
    NVRTC's (the headers must match the compiler), else the first found at all."""
    found: list[HeaderDir] = []
    seen: set[str] = set()
    for path, via in header_candidates():
        real = os.path.realpath(path)
        if real in seen or not Path(path, HEADER).is_file():
            continue
        seen.add(real)
        found.append(HeaderDir(path, via, _header_version(Path(path))))
    if not found:
        looked = "; ".join(f"{path} ({via})" for path, via in dict.fromkeys(header_candidates()))
        raise HwnasError(f"NVRTC needs the CUDA headers ({HEADER}), found nowhere. Looked in: {looked}. "
                         f"Install them with: {install_hint()}, or set CUDA_HOME to a CUDA toolkit")
    if nvrtc_major is not None:
        for header_dir in found:
            if header_dir.cuda_version and int(header_dir.cuda_version.split(".")[0]) == nvrtc_major:
                return header_dir
    return found[0]


def source_key(arch: str) -> str:
    texts = [(source_dir() / name).read_bytes() for name in SOURCES]
    return hashlib.sha256(b"\0".join([*texts, arch.encode()])).hexdigest()[:16]


def compile_cubin(arch: str) -> tuple[bytes, str]:
    """Cubin of mixed_dw.cu for `arch` (e.g. 'sm_90') and NVRTC's log; no GPU needed."""
    return _compile(arch, "CUBIN")


def compile_ptx(arch: str) -> tuple[bytes, str]:
    """PTX of mixed_dw.cu for `arch`'s virtual architecture (sm_90: compute_90) and NVRTC's log.
    Its .entry declarations state each kernel's parameters as the driver reads them."""
    return _compile(arch, "PTX")


def _compile(arch: str, output: Literal["CUBIN", "PTX"]) -> tuple[bytes, str]:
    if not re.fullmatch(r"sm_\d+[a-z]?", arch):
        raise HwnasError(f"a GPU architecture looks like sm_80 or sm_90, got {arch!r}")
    target = arch if output == "CUBIN" else arch.replace("sm_", "compute_")
    compiler = nvrtc()
    headers = find_headers(version()[0])
    sources = source_dir()
    program = check(compiler.nvrtcCreateProgram((sources / "mixed_dw.cu").read_bytes(), b"mixed_dw.cu", 1,
                                                [(sources / "mixed_dw.h").read_bytes()], [b"mixed_dw.h"]),
                    "nvrtcCreateProgram")
    try:
        options = [f"--gpu-architecture={target}".encode(), b"-std=c++17", b"-default-device",
                   f"-I{headers.path}".encode()]
        result = compiler.nvrtcCompileProgram(program, len(options), options)
        # NVRTC writes into the buffers: bytearrays, never bytes (b" " * 1 is CPython's shared one-byte
        # object, and writing into it corrupts every b" " of the process, pickling included)
        log = bytearray(check(compiler.nvrtcGetProgramLogSize(program), "nvrtcGetProgramLogSize"))
        compiler.nvrtcGetProgramLog(program, log)
        log_text = log.decode(errors="replace").strip("\x00 \n")
        check(result, f"NVRTC compilation of mixed_dw.cu for {target} (CUDA headers from {headers.path}, "
                      f"found via {headers.found_via})", log_text)
        image = bytearray(check(getattr(compiler, f"nvrtcGet{output}Size")(program), f"nvrtcGet{output}Size"))
        check(getattr(compiler, f"nvrtcGet{output}")(program, image), f"nvrtcGet{output}")
    finally:
        compiler.nvrtcDestroyProgram(program)
    return bytes(image), log_text


def cubin_path(arch: str) -> Path:
    """Where compile_cubin's cubin for `arch` is kept, under the sources' hash."""
    from hwnas.cache import kernel_dir

    return kernel_dir() / f"mixed_dw-{arch}-{source_key(arch)}.cubin"


def cached_cubin(arch: str) -> bytes:
    """compile_cubin's cubin, kept in the cache folder under the sources' hash."""
    path = cubin_path(arch)
    if path.exists():
        return path.read_bytes()
    from hwnas.files import write_bytes

    cubin, _ = compile_cubin(arch)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, cubin)  # whole or not at all: another process may read it meanwhile
    return cubin
