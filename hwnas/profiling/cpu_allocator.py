"""Time eager PyTorch on the CPU at its steady state: keep freed memory in the process.

glibc serves a large block (from 128 KiB; a threshold it raises, up to 32 MiB, each time such a
block is freed) with its own mmap, and unmaps it on free. An eager network at batch 16 then
faults in fresh pages for most activations on every run, and how many take that path depends on
what the process allocated before: an entry's ratio to the reference changed by a fifth between
two groups, the reference network ran up to 2x slower in a transfer's small groups than in a full
build's, and an entry ran 3.8x slower than with freed memory kept
(benchmarks/bench_torch_cpu_allocator.py). A serving process, or
PyTorch's CPU tuning advice (a caching allocator: jemalloc, tcmalloc), keeps that memory; so do
the torch backend and the search on the CPU (training allocates the same large activations every
step), through glibc's documented `mallopt`, once per process. onnxruntime keeps its own arena
and needs none of this.

HWNAS_CPU_ALLOCATOR=system leaves the allocator as it is (a preloaded jemalloc or tcmalloc is
left alone in any case). What was done is recorded in the table (`meta.backend.allocator`) and
in a search's round events (`log.jsonl`, `allocator`).
"""

from __future__ import annotations

import ctypes
import sys

from hwnas.environment import env_choice

ENV = "HWNAS_CPU_ALLOCATOR"
CHOICES = ("kept", "system")
# glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: free memory at the heap's top is kept up to 2 GiB

_state: str | None = None


def requested() -> str:
    return env_choice(ENV, CHOICES, ": use 'kept' (the default: freed memory stays in the process, so graphs are "
                                    "timed at their steady state) or 'system' (the allocator as it is)")


def keep_freed_memory() -> str:
    """Configure the allocator once per process; returns what was done, for the table's metadata."""
    global _state
    if _state is None:  # mallopt cannot be undone: the first call's setting holds for the process
        _state = _configure(requested())
    return _state


def _configure(choice: str) -> str:
    libc = _glibc()
    if libc is None:
        return "system (not glibc)"
    name = f"glibc {_glibc_version(libc)}"
    if _preloaded(libc):
        return "preloaded allocator (LD_PRELOAD), left as it is"
    if choice == "system":
        return f"{name}, as it is ({ENV}=system)"
    if libc.mallopt(M_MMAP_MAX, 0) != 1 or libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return f"{name}, as it is (mallopt refused)"
    return f"{name}, freed memory kept (M_MMAP_MAX 0, M_TRIM_THRESHOLD 2 GiB)"


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (musl and others lack it)
    except (OSError, AttributeError):
        return None
    return libc


def _glibc_version(libc: ctypes.CDLL) -> str:
    get = libc.gnu_get_libc_version
    get.restype = ctypes.c_char_p
    return str(get().decode())


def _preloaded(libc: ctypes.CDLL) -> bool:
    """Whether the process's malloc is another library's (LD_PRELOAD), not glibc's."""
    process = ctypes.CDLL(None)
    return ctypes.cast(process.malloc, ctypes.c_void_p).value != ctypes.cast(libc.malloc, ctypes.c_void_p).value
