"""TensorRT's real Python bindings, importable on a machine without TensorRT's libraries.

NVIDIA publishes the bindings of every release as a small wheel of their own
(tensorrt-cu12-bindings; the `tensorrt` package adds only the libraries and a module that
re-exports the bindings). Their extension module links against libnvinfer, libnvinfer_plugin
and libnvonnxparser (sonames `lib<name>.so.<major>`), but importing it needs only the nine
functions it calls from them (`nm -D --undefined-only tensorrt.so`, the same nine from 10.0.1
to 11.4). Stand-in libraries that export those functions, each returning null, built here from
a few lines of C with the system compiler, are enough to import the real module and read its
whole API: classes, enums and their members, methods and properties, and the signatures that
pybind11 writes into their docstrings. Nothing can be built or run: the stand-ins have no code.

Each checked release gets a cached virtual environment (isolated_venv.cached_venv) with its
bindings wheel and pybind11-stubgen, and one overlay folder per major (cached too) holding the
stand-in libraries and a `tensorrt` package that re-exports the bindings, as NVIDIA's does.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from isolated_venv import CACHE, cached_venv, clean_env
from trt_stubs import patch_stub_text

# The releases checked: the oldest supported 10.x (pyproject: tensorrt>=10), the newest 10.x,
# the first 11.x and the newest 11.x on the package index. Newer releases: add them here.
VERSIONS = ("10.0.1", "10.16.1.11", "11.0.0.114", "11.4.0.106")
STUBGEN = "pybind11-stubgen==3.0.0"
TYPING_EXTENSIONS = "typing_extensions==4.16.0"  # the bindings' signatures name typing_extensions.Buffer

# What the bindings' extension module imports from each library.
STANDIN_SYMBOLS = {
    "nvinfer": ("createInferBuilder_INTERNAL", "createInferRuntime_INTERNAL", "createInferRefitter_INTERNAL",
                "getPluginRegistry", "getBuilderPluginRegistry"),
    "nvinfer_plugin": ("initLibNvInferPlugins",),
    "nvonnxparser": ("createNvOnnxParser_INTERNAL", "createNvOnnxParserRefitter_INTERNAL", "getNvOnnxParserVersion"),
}
# NVIDIA's `tensorrt` package is this module (plus the libraries).
SHIM = "from tensorrt_bindings import *\nfrom tensorrt_bindings import __version__\n"
RESOLVER = Path(__file__).with_name("trt_resolve.py")


def standin_source(library: str) -> str:
    """C for a stand-in library: every function returns null (0), whatever it is given."""
    return "".join(f"void *{name}(void) {{ return 0; }}\n" for name in STANDIN_SYMBOLS[library])


def overlay(major: int) -> Path:
    """The folder (cached) with the stand-in libraries of TensorRT `major` and the `tensorrt` package."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) to build the stand-in TensorRT libraries")
    key = hashlib.sha256(json.dumps([major, SHIM, {lib: standin_source(lib) for lib in STANDIN_SYMBOLS}]).encode())
    root = CACHE / f"tensorrt{major}-standin-{key.hexdigest()[:12]}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(f"{root}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "complete").exists():
            shutil.rmtree(root, ignore_errors=True)
            (root / "tensorrt").mkdir(parents=True)
            for library in STANDIN_SYMBOLS:
                source = root / f"{library}.c"
                source.write_text(standin_source(library))
                soname = f"lib{library}.so.{major}"
                proc = subprocess.run([cc, "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(root / soname),
                                       str(source)], capture_output=True, text=True, timeout=120)
                assert proc.returncode == 0, proc.stderr
            (root / "tensorrt" / "__init__.py").write_text(SHIM)
            (root / "complete").write_text("")
    return root


@dataclass(frozen=True)
class Bindings:
    """One release's bindings: the python of its environment and the overlay that makes it import."""
    version: str
    python: Path
    overlay: Path

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def run(self, args: list[str], stdin: str = "", libraries: bool = True) -> subprocess.CompletedProcess[str]:
        """Python in this release's environment; `libraries`: with the stand-in libraries on the path."""
        env = clean_env(PYTHONPATH=str(self.overlay), **({"LD_LIBRARY_PATH": str(self.overlay)} if libraries else {}))
        return subprocess.run([str(self.python), *args], input=stdin, capture_output=True, text=True, env=env,
                              timeout=300)

    def resolve(self, chains: list[list]) -> dict:
        """trt_resolve.py over `chains` in this release's module: {"version", "module", "results"}."""
        proc = self.run([str(RESOLVER)], json.dumps(chains))
        assert proc.returncode == 0, proc.stderr[-4000:]
        return json.loads(proc.stdout)

    def stubs(self, dest: Path) -> Path:
        """Type stubs generated from this release's module (pybind11-stubgen), in a folder for MYPYPATH.

        Patched as tensorrt-stubs are (a parameter named `in`, a parameter order), given the
        buffer protocol where the module's classes have it (IHostMemory: `bytes(plan)`), which
        a stub generator cannot see, and a `tensorrt` package re-exporting `tensorrt_bindings`.
        """
        proc = self.run(["-m", "pybind11_stubgen", "-o", str(dest), "tensorrt_bindings"])
        assert proc.returncode == 0 and (dest / "tensorrt_bindings").is_dir(), proc.stderr[-4000:]
        proc = self.run([str(RESOLVER), "--buffer-classes"])
        assert proc.returncode == 0, proc.stderr[-4000:]
        buffers = json.loads(proc.stdout)
        for stub in (dest / "tensorrt_bindings").rglob("*.pyi"):
            text = patch_stub_text(stub.read_text())
            for name in buffers:
                text = text.replace(f"\nclass {name}:\n", f"\nclass {name}:\n    def __buffer__(self, flags: int, /)"
                                                          " -> memoryview: ...\n", 1)
            stub.write_text(text)
        (dest / "tensorrt").mkdir()
        (dest / "tensorrt" / "__init__.pyi").write_text("from tensorrt_bindings.tensorrt import *\n__version__: str\n")
        return dest


def bindings(version: str) -> Bindings:
    python = cached_venv(f"tensorrt-{version}", [f"tensorrt-cu12-bindings=={version}", STUBGEN, TYPING_EXTENSIONS])
    return Bindings(version, python, overlay(int(version.split(".")[0])))


def run_mypy(stub_dir: Path, files: list[Path], config: Path) -> subprocess.CompletedProcess[str]:
    """mypy (this environment's) over `files` against the stubs in `stub_dir`; other imports are not
    followed (torch and the rest of hwnas are Any: only the use of TensorRT's API is checked)."""
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--no-incremental", "--follow-imports", "skip",
         "--cache-dir", str(stub_dir / ".mypy_cache"), "--show-error-codes", "--no-error-summary",
         *map(str, files)],
        capture_output=True, text=True, env={"MYPYPATH": str(stub_dir), "PATH": "/usr/bin:/bin"}, timeout=600)
