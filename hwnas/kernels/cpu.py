"""The CPU twin of the kernel, compiled from kernels/mixed_dw_cpu.cpp with the system C++
compiler (g++ or $CXX, OpenMP) into a cache keyed by the sources' hash, and called with ctypes.

A plain shared library, not a torch extension: it builds in about a second (no torch
headers) and needs nothing but a C++ compiler, which every machine that builds Python
packages has.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from hwnas.cache import kernel_dir
from hwnas.errors import HwnasError
from hwnas.kernels.segments import CSegmentTable
from hwnas.kernels.sources import source_dir

SOURCES = ("mixed_dw.h", "mixed_dw_planes.h", "mixed_dw_cpu.cpp")
# one form each (no separate "_fast" plane form); grad_input_bn is the fast path's whole BN backward
CPU_ONLY_FORM = ("bn_backward", "bn_coefficients", "channel_stats", "grad_input_bn")
FLAGS = ("-O3", "-std=c++17", "-fopenmp", "-fPIC", "-shared", "-march=native")


def compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not cxx:
        raise HwnasError("building the CPU kernel needs a C++ compiler (g++ or clang++, or set $CXX)")
    return cxx


def library_key() -> str:
    """The built library's cache key: the sources, the flags and the CPU."""
    texts = [(source_dir() / name).read_bytes() for name in SOURCES]
    # -march=native code is CPU-specific: the CPU model is part of the key (a shared home directory
    # on another machine must not load it).
    from hwnas.profiling.device import cpu_fingerprint

    cpu = str(cpu_fingerprint()).encode()
    return hashlib.sha256(b"\0".join([*texts, " ".join(FLAGS).encode(), cpu])).hexdigest()[:16]


def library_path() -> Path:
    """Where the built library is (or will be) kept."""
    return kernel_dir() / f"mixed_dw_cpu-{library_key()}.so"


def build(force: bool = False) -> Path:
    sources = source_dir()
    lib = library_path()
    if lib.exists() and not force:
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_suffix(f".{os.getpid()}.tmp")
    cmd = [compiler(), *FLAGS, f"-I{sources}", str(sources / "mixed_dw_cpu.cpp"), "-o", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise HwnasError(f"building the CPU kernel failed: {' '.join(cmd)}\n{proc.stderr.strip()}")
    os.replace(tmp, lib)
    return lib


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(build()))
    size = lib.mixed_dw_segment_table_size()
    if size != ctypes.sizeof(CSegmentTable):
        raise AssertionError(f"SegmentTable is {size} bytes in C, {ctypes.sizeof(CSegmentTable)} in Python")
    pointers = {"forward": 3, "grad_input": 6, "grad_weight": 3, "bn_backward": 2, "bn_coefficients": 5,
                "channel_stats": 2, "grad_input_bn": 6}
    for name, count in pointers.items():  # count: pointer arguments before the segment table
        for variant in ("", "_fast") if name not in CPU_ONLY_FORM else ("",):
            for suffix in ("f32", "f64"):
                fn = getattr(lib, f"mixed_dw_{name}{variant}_{suffix}")
                fn.argtypes = [ctypes.c_void_p] * count + [ctypes.POINTER(CSegmentTable)]
                fn.restype = None
    return lib
