"""Where the kernels' C++/CUDA sources are.

The sources live in the project's top-level kernels/ folder. A wheel carries them as package
data of hwnas.kernels (the build copies them to hwnas/kernels/csrc/, see setup.py), found
through importlib.resources; an editable install or a checkout on PYTHONPATH reads them from
kernels/ beside the package.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from hwnas.errors import HwnasError

PACKAGED = "csrc"  # the folder inside hwnas.kernels that a wheel ships them in
FILES = ("mixed_dw.h", "mixed_dw_planes.h", "mixed_dw.cu", "mixed_dw_cpu.cpp")


@functools.lru_cache(maxsize=1)
def source_dir() -> Path:
    """The folder holding the kernel sources, as a real path (the C++ compiler reads it)."""
    packaged = resources.files("hwnas.kernels") / PACKAGED
    checkout = Path(__file__).resolve().parents[2] / "kernels"
    for candidate in (packaged, checkout):
        # A zipped install has no real path; hwnas is not zip-safe (the compilers need files).
        if isinstance(candidate, Path) and all((candidate / name).is_file() for name in FILES):
            return candidate
    raise HwnasError(f"the kernel sources ({', '.join(FILES)}) are missing: looked in {packaged} (an "
                     f"installed wheel) and {checkout} (a checkout); reinstall hwnas")
