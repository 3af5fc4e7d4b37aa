"""kernels/mixed_dw.cu on the CPU under a test-only emulation of CUDA's execution model
(tests/cuda_emulation/: fibers per thread, barriers, warp shuffles, shared memory per block),
and the ops' CUDA launches routed to it.

`route_cuda_launches` makes hwnas's ops (hwnas.kernels.ops) send every launch of a CUDA kernel
to a launcher of the test's while they run on CPU tensors with impl="elementwise", the path that
makes the CUDA kernels' sequence of launches (the batch norm backward included); the CPU-only
pieces (the training batch statistics, which CUDA takes from torch) still run on the CPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from hwnas.kernels import cuda, ops
from hwnas.kernels.segments import CSegmentTable

EMULATION = Path(__file__).resolve().parent / "cuda_emulation"
CXX = shutil.which("g++") or shutil.which("c++")
# -fno-gnu-unique: each library keeps its own statics of template functions (the __shared__ arrays of
# a mutated kernel's library are its own, not the first loaded library's); -U_FORTIFY_SOURCE: the
# scheduler longjmps between fiber stacks, which glibc's checked longjmp refuses
FLAGS = ["-std=c++17", "-O1", "-fPIC", "-fno-gnu-unique", "-U_FORTIFY_SOURCE", f"-I{EMULATION}",
         f"-I{EMULATION / 'include'}"]
ORDERS = {"forward": 0, "reverse": 1, "shuffled": 2}
# The kernels the ops launch on CUDA tensors (the rest run on the CPU only)
CUDA_NAMES = (*cuda.OPS, "bn_coefficients")
# Kernels that loop over what their grid leaves (grid-stride); grad_weight takes one block per
# weight tap and bn_coefficients one thread per channel, so their grids are never cut
GRID_STRIDE = ("forward", "grad_input", "bn_backward")

Launcher = Callable[[str, torch.dtype, list[int], CSegmentTable, "int | None", "int | None"], None]
SHARED = re.compile(r"__shared__\s+[\w:<>* ]+?\b(\w+)\s*\[")  # a __shared__ array's name


def compile_emulation(out: Path, kernels: Path) -> Path:
    """The emulation library of the kernel sources in folder `kernels`, built in out."""
    if CXX is None:
        pytest.skip("no C++ compiler (g++) on PATH: the CUDA emulation is compiled from C++")
    out.mkdir(parents=True, exist_ok=True)
    scheduler = out / "scheduler.o"
    if not scheduler.exists():
        subprocess.run([CXX, *FLAGS, "-c", str(EMULATION / "scheduler.cpp"), "-o", str(scheduler)], check=True)
    library = out / f"emulation-{hashlib.sha256(str(kernels).encode()).hexdigest()[:12]}.so"
    # -Bsymbolic: the library calls its own kernels, not the same-named ones of the CPU twin's library
    proc = subprocess.run([CXX, *FLAGS, f"-I{kernels}", "-shared", "-Wl,-Bsymbolic", str(EMULATION / "kernels.cpp"),
                           str(scheduler), "-o", str(library)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return library


def shared_variables(library: Path, handle: ctypes.CDLL, kernels: Path) -> list[tuple[int, int]]:
    """(address, bytes) of every __shared__ variable of the library's kernels: the statics that
    the sources declare __shared__, found in the library's symbol table (a function's static is
    named ..E<length><name>), one per instantiation of a kernel template."""
    names = {m.group(1) for source in (kernels / "mixed_dw.cu", EMULATION / "kernels.cpp")
             for m in SHARED.finditer(source.read_text())}
    listing = subprocess.run(["nm", "--defined-only", "-S", str(library)], capture_output=True, text=True,
                             check=True).stdout
    symbols = {}
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) == 4:
            symbols[fields[3]] = (int(fields[0], 16), int(fields[1], 16))
    base = ctypes.cast(handle.emulation_launch, ctypes.c_void_p).value - symbols["emulation_launch"][0]
    found = {name: [(base + offset, size) for symbol, (offset, size) in symbols.items()
                    if symbol.startswith("_ZZ") and re.search(rf"E{len(name)}{name}(_\d+)?$", symbol)]
             for name in names}
    missing = [name for name, places in found.items() if not places]
    assert not missing, f"__shared__ variables not found in {library.name}'s symbols: {missing}"
    return [place for places in found.values() for place in places]


class Emulator:
    """Launches the emulated kernels as hwnas.kernels.cuda.launch launches the real ones.
    library: compile_emulation's, of the kernel sources in folder `kernels`."""

    def __init__(self, library: Path, kernels: Path) -> None:
        self.lib = ctypes.CDLL(str(library))
        self.lib.emulation_launch.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p,
                                              ctypes.c_size_t, ctypes.c_int, ctypes.c_uint, ctypes.c_char_p,
                                              ctypes.c_size_t]
        self.shared = shared_variables(library, self.lib, kernels)
        count = len(self.shared)
        self.lib.emulation_set_shared_memory((ctypes.c_void_p * count)(*[a for a, _ in self.shared]),
                                             (ctypes.c_size_t * count)(*[n for _, n in self.shared]), count)
        self.order, self.seed, self.max_grid = "forward", 0, None
        self.launches: list[tuple[str, int, int]] = []  # (kernel, blocks, the blocks cuda.launch would take)

    def run(self, kernel: str, grid: int, block: int, values: list) -> None:
        """Run `kernel` with argument values (ctypes objects, each passed by its address)."""
        self.launch_packed(kernel, grid, block, cuda.KernelArguments(values))

    def launch_packed(self, kernel: str, grid: int, block: int, args: cuda.KernelArguments) -> None:
        error = ctypes.create_string_buffer(1024)
        rc = self.lib.emulation_launch(kernel.encode(), grid, block, args.address, len(args.values),
                                       ORDERS[self.order], self.seed, error, len(error))
        if rc:
            raise EmulationError(error.value.decode())

    def launch(self, name: str, dtype: torch.dtype, pointers: list[int], table: CSegmentTable, total: int | None,
               grid: int | None) -> None:
        """As cuda.launch: the same argument packing and grid; max_grid cuts the grid-stride kernels' grids."""
        full = grid if grid is not None else cuda.grid_size(name, table, total)
        blocks = min(full, self.max_grid) if self.max_grid is not None and name in GRID_STRIDE else full
        kernel = f"mixed_dw_{name}_{cuda.DTYPE_SUFFIX[dtype]}"
        self.launches.append((kernel, blocks, full))
        self.launch_packed(kernel, blocks, cuda.THREADS, cuda.pack_arguments(pointers, table, total))


class EmulationError(RuntimeError):
    """The emulation's report of a kernel that broke CUDA's execution model (or a bad launch)."""


def route_cuda_launches(monkeypatch: pytest.MonkeyPatch, launcher: Launcher) -> None:
    """While the test runs, the ops' launches of CUDA kernels go to launcher(name, dtype, pointers,
    table, total, grid), with what the op would hand hwnas.kernels.cuda.launch."""
    cpu_run = ops._run

    def run(name, tensors, table, impl, total=None, grid=None):
        if name not in CUDA_NAMES:
            return cpu_run(name, tensors, table, impl, total, grid)
        assert impl == "elementwise", "the CUDA kernels' sequence of launches is the elementwise path's"
        launcher(name, tensors[0].dtype, [t.data_ptr() if t is not None else 0 for t in tensors], table, total, grid)

    monkeypatch.setattr(ops, "_run", run)
