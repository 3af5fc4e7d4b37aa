"""Clean virtual environments with hwnas installed from its wheel, as users install it.

The third-party packages of each environment are installed once and kept in a cache folder
keyed by their requirements ($HWNAS_TEST_VENVS, default ~/.cache/hwnas/test-venvs), so a
test run after the first costs seconds; hwnas's own wheel is reinstalled every time. Where pip
cannot get a package (no index, no cached wheel), the tests that need it skip and say so.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("HWNAS_TEST_VENVS", Path.home() / ".cache" / "hwnas" / "test-venvs"))
# torch's CPU build: a plain 'torch' requirement would pull the multi-GB CUDA build
TORCH = "torch==2.13.0"
# pip's words for "could not get it" (no network, no index, nothing cached), as opposed to a conflict
UNREACHABLE = re.compile(r"No matching distribution found|Could not find a version|NewConnectionError|"
                         r"Temporary failure in name resolution|Network is unreachable|ConnectTimeout|"
                         r"ReadTimeoutError|Max retries exceeded")


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def extra(name: str) -> list[str]:
    """The requirements of one of hwnas's extras, as pyproject.toml states them."""
    return list(project()["optional-dependencies"][name])


def clean_env(**extra_vars: str) -> dict[str, str]:
    """The environment of a user's shell on a machine without a CUDA toolkit: no checkout on
    PYTHONPATH, no CUDA_HOME/CUDA_PATH, no library path, and a PATH without /usr/local (nvcc)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "CUDA_HOME", "CUDA_PATH", "LD_LIBRARY_PATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = "/usr/bin:/bin"
    env.update(extra_vars)
    return env


def pip(python: Path, *args: str, cwd: Path | None = None) -> None:
    """Run pip in an environment; skip the calling test where pip cannot reach what it needs."""
    proc = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args], capture_output=True,
                          text=True, cwd=cwd, env=clean_env(), timeout=1800)
    if proc.returncode:
        if UNREACHABLE.search(proc.stderr):
            pytest.skip(f"pip cannot get the packages ({' '.join(args[-3:])}): "
                        f"{UNREACHABLE.search(proc.stderr).group(0)}")  # type: ignore[union-attr]
        raise AssertionError(f"pip {' '.join(args)} failed:\n{proc.stderr[-4000:]}")


def cached_venv(name: str, requirements: list[str]) -> Path:
    """The python of a virtual environment holding `requirements` (built once, then reused)."""
    key = hashlib.sha256("\n".join([sys.version, *sorted(requirements)]).encode()).hexdigest()[:12]
    root = CACHE / f"{name}-{key}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others wait and reuse it
        if not (root / "complete").exists():
            shutil.rmtree(root, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True, env=clean_env())
            try:
                pip(root / "bin" / "python", "install", "-q", *requirements)
            except BaseException:
                shutil.rmtree(root, ignore_errors=True)
                raise
            (root / "complete").write_text("\n".join(requirements) + "\n")
    return root / "bin" / "python"


def build_wheel(out: Path) -> Path:
    """hwnas's wheel, built the way an index's would be: an sdist first, the wheel from it."""
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-c", "import sys; from setuptools.build_meta import build_sdist; "
                           "print(build_sdist(sys.argv[1]))", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    sdist = out / proc.stdout.strip().splitlines()[-1]
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(out), str(sdist)], capture_output=True, text=True, timeout=600, cwd=out)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = out.glob("hwnas-*.whl")
    return wheel


def install_hwnas(python: Path, wheel: Path, extras: str = "") -> None:
    """Put this wheel in the environment (not editable); its dependencies must already be there."""
    pip(python, "install", "-q", "--no-deps", "--force-reinstall", str(wheel))
    # with the extras' requirements, offline: all must be in the environment already
    pip(python, "install", "-q", "--no-index", f"{wheel}[{extras}]" if extras else str(wheel))
    pip(python, "check")
