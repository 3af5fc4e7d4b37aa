"""TensorRT 10.13 type stubs (tensorrt-stubs), patched so mypy can parse them.

The stubs install a stub-only `tensorrt` package; three spots do not parse or resolve:
a parameter named `in` (a keyword), a non-default parameter after default ones in
`add_scale_nd`, and `import tensorrt_libs`. The patched copy goes in a temporary directory
put first on mypy's search path; site-packages stays untouched.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

STUB_PACKAGES = ("tensorrt", "tensorrt_bindings")


def installed_stub_dir() -> Path | None:
    for entry in map(Path, sys.path):
        if (entry / "tensorrt" / "__init__.pyi").is_file():
            return entry
    return None


def patch_stub_text(text: str) -> str:
    text = re.sub(r"\bin: ", "in_: ", text)  # `in` is a keyword
    text = re.sub(r"(power: Weights = None, channel_axis: [\w.]+)\)", r"\1 = ...)", text)
    text = re.sub(r"^import tensorrt_libs as tensorrt_libs\n", "", text, flags=re.M)
    return text


def patched_stubs(dest: Path) -> Path:
    src = installed_stub_dir()
    if src is None:
        raise FileNotFoundError("tensorrt-stubs are not installed: pip install --no-deps tensorrt-stubs")
    for pkg in STUB_PACKAGES:
        shutil.copytree(src / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
        for stub in (dest / pkg).rglob("*.pyi"):
            stub.write_text(patch_stub_text(stub.read_text()))
    return dest


def run_mypy(stub_dir: Path, files: list[str], config: Path, options: list[str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    env_path = str(stub_dir)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--no-incremental",
         "--cache-dir", str(stub_dir / ".mypy_cache"), "--follow-imports", "silent", *(options or []), *files],
        capture_output=True, text=True, env={"MYPYPATH": env_path, "PATH": "/usr/bin:/bin"},
    )


def mypy_available() -> bool:
    return importlib.util.find_spec("mypy") is not None
