"""`hwnas env --check`: every GPU path the machine can run, on small inputs, against an
independent reference, one result per path; the paths it cannot run, each with the reason.

Paths (the module that checks each):
  kernels     the mixed-depthwise kernels, the CPU twin (float64, float32) and, on each GPU model,
              CUDA (float32, float16, bfloat16)                                     kernels.py
  fused cell  the fused multi-branch layer against the eager SupernetCell           cell.py
  timing      CUDA-event timing (GraphTimer) of work of known length vs wall clock  timing.py
  tensorrt    a tiny conv-BN-ReLU engine, FP32 and FP16, vs onnxruntime            engines.py
  nccl        two processes over NCCL: global batch norm vs one process             nccl.py
About a minute on a GPU; a budget skips the paths that no longer fit, saying so.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hwnas.selfcheck.tolerance import Comparison

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
# Rough seconds per path on a GPU machine, for --budget (the compilers' first runs come on top).
ESTIMATE_S = {"kernels": 4.0, "fused cell": 4.0, "timing": 3.0, "tensorrt": 25.0, "nccl": 40.0}
COMPILE_S = {"cpu": 10.0, "cuda": 15.0}  # building the CPU twin, NVRTC compiling the CUDA kernels


@dataclass
class PathResult:
    name: str
    status: str
    seconds: float = 0.0
    comparisons: list[Comparison] = field(default_factory=list)
    detail: str = ""  # skipped: why; failed by an error: the error's first line; else the worst quantity
    error: str = ""  # failed by an error: its whole message (a compiler's log, a traceback's last words)

    @property
    def worst(self) -> Comparison | None:
        return max(self.comparisons, key=lambda c: c.worst, default=None)

    def to_dict(self) -> dict[str, Any]:
        worst = self.worst
        return {"name": self.name, "status": self.status, "seconds": round(self.seconds, 3), "detail": self.detail,
                "worst": None if worst is None else worst.to_dict()["worst"],
                "tolerance": None if worst is None else worst.tolerance,
                "error": self.error, "comparisons": [c.to_dict() for c in self.comparisons]}


@dataclass(frozen=True)
class Check:
    """A path to check: how to run it (its comparisons), or why it cannot run on the machine."""

    name: str
    estimate_s: float
    run: Callable[[], list[Comparison]] | None = None
    skip: str | None = None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def cuda_why_not() -> str | None:
    if torch.version.cuda is None:
        return "no CUDA GPU: this torch is a CPU-only build (install torch built for CUDA, see pytorch.org)"
    if not torch.cuda.is_available():
        return "no CUDA GPU: torch.cuda.is_available() is False (check nvidia-smi)"
    return None


def tensorrt_why_not() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return "TensorRT is not installed (pip install 'hwnas[tensorrt]')"
    if not hasattr(tensorrt, "Builder"):
        return "only TensorRT's type stubs are installed, not its libraries (pip install 'hwnas[tensorrt]')"
    return cuda_why_not()


def gpu_models() -> list[int]:
    """The first device index of each GPU model (name and architecture) in the machine."""
    seen: dict[tuple[str, int, int], int] = {}
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        seen.setdefault((props.name, props.major, props.minor), index)
    return list(seen.values())


def _compiled(device_type: str, index: int = 0) -> bool:
    """Whether the kernels for this device are in the cache already (no compile on the way)."""
    try:
        if device_type == "cpu":
            from hwnas.kernels.cpu import library_path

            return library_path().exists()
        from hwnas.kernels.nvrtc import cubin_path

        major, minor = torch.cuda.get_device_capability(index)
        return cubin_path(f"sm_{major}{minor}").exists()
    except Exception:  # noqa: BLE001 - only an estimate
        return False


def plan(folder: Path) -> list[Check]:
    """Every path, in order: those the machine runs, and the others with the reason."""
    from hwnas.selfcheck import cell, engines, kernels, nccl, timing

    paths: list[Check] = []
    cpu = torch.device("cpu")
    for i, dtype in enumerate(kernels.DTYPES["cpu"]):
        paths.append(Check(f"kernels cpu {dtype_name(dtype)} (CPU twin)",
                           ESTIMATE_S["kernels"] + (0 if i or _compiled("cpu") else COMPILE_S["cpu"]),
                           partial(kernels.check_kernels, cpu, dtype)))
    for dtype in cell.DTYPES["cpu"]:
        paths.append(Check(f"fused cell cpu {dtype_name(dtype)}", ESTIMATE_S["fused cell"],
                           partial(cell.check_cell, cpu, dtype)))
    no_cuda = cuda_why_not()
    gpus = [] if no_cuda else gpu_models()
    where = [(torch.device("cuda", i), f"cuda:{i} {torch.cuda.get_device_name(i)}") for i in gpus] or \
        [(torch.device("cuda"), "cuda")]
    for device, label in where:
        for i, dtype in enumerate(kernels.DTYPES["cuda"]):
            compile_s = 0 if i or no_cuda or _compiled("cuda", device.index or 0) else COMPILE_S["cuda"]
            paths.append(Check(f"kernels {label} {dtype_name(dtype)}", ESTIMATE_S["kernels"] + compile_s,
                               partial(kernels.check_kernels, device, dtype), no_cuda))
        for dtype in cell.DTYPES["cuda"]:
            paths.append(Check(f"fused cell {label} {dtype_name(dtype)}", ESTIMATE_S["fused cell"],
                               partial(cell.check_cell, device, dtype), no_cuda))
        paths.append(Check(f"timing {label}: CUDA events vs wall clock", ESTIMATE_S["timing"],
                           partial(timing.check_timing, device), no_cuda))
    no_trt = tensorrt_why_not()
    for precision in ("fp32", "fp16"):
        paths.append(Check(f"tensorrt {precision} engine vs onnxruntime", ESTIMATE_S["tensorrt"],
                           partial(engines.check_engine, precision, folder), no_trt))
    paths.append(Check(f"nccl: global batch norm, {nccl.WORLD} processes vs 1", ESTIMATE_S["nccl"],
                       partial(nccl.check_global_bn, folder), nccl.why_not()))
    return paths


def one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception as one line: its first line, with its type unless it is an HwnasError."""
    from hwnas.errors import HwnasError

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if isinstance(exc, HwnasError) else f"{type(exc).__name__}: {text}".rstrip(": ")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def run_path(path: Check) -> PathResult:
    """One path: passed when every comparison is within its tolerance; an error fails it."""
    assert path.run is not None
    start = time.perf_counter()
    try:
        found = path.run()
    except Exception as exc:  # noqa: BLE001 - a path that cannot run on a GPU machine has failed
        return PathResult(path.name, FAILED, time.perf_counter() - start, [], one_line(exc),
                          f"{type(exc).__name__}: {exc}"[:20000])
    seconds = time.perf_counter() - start
    bad = [c for c in found if not c.ok]
    if not found:
        return PathResult(path.name, FAILED, seconds, found, "nothing was compared")
    worst = max(found, key=lambda c: c.worst)
    detail = (f"{len(bad)} of {len(found)} quantities off; worst: {worst.what}" if bad else
              f"{len(found)} quantities; worst: {worst.what}")
    return PathResult(path.name, FAILED if bad else PASSED, seconds, found, detail)


def run_checks(budget_s: float | None = None, progress: bool = True) -> list[PathResult]:
    """Every path the machine can run, within `budget_s` seconds when given: a path whose
    estimate no longer fits is skipped, saying so."""
    from hwnas.progress import progress_bar

    start = time.monotonic()
    results: list[PathResult] = []
    with tempfile.TemporaryDirectory(prefix="hwnas-check-") as tmp:
        paths = plan(Path(tmp))
        with progress_bar(len(paths), "hwnas env --check", unit="path", enabled=progress) as bar:
            for path in paths:
                bar.set_postfix_str(path.name, refresh=False)
                left = None if budget_s is None else budget_s - (time.monotonic() - start)
                if path.skip is not None:
                    results.append(PathResult(path.name, SKIPPED, detail=path.skip))
                elif left is not None and path.estimate_s > left:
                    results.append(PathResult(path.name, SKIPPED, detail=(
                        f"the budget leaves {max(left, 0):.0f} s, this path takes about {path.estimate_s:.0f} s "
                        f"(raise --budget)")))
                else:
                    results.append(run_path(path))
                bar.update(1)
    return results


def machine() -> dict[str, Any]:
    """The machine the check ran on, for a bug report: CPU, GPUs and driver, software versions."""
    from hwnas.profiling.device import cpu_fingerprint, gpu_fingerprint, nvidia_driver_release, software_versions

    gpus = [gpu_fingerprint(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"cpu": cpu_fingerprint(), "gpus": gpus, "nvidia_driver": nvidia_driver_release(),
            "torch_cuda": torch.version.cuda, "argv": sys.argv,
            "software": software_versions("onnxruntime", "tensorrt", "cuda-bindings", "nvidia-cuda-nvrtc",
                                          "nvidia-cuda-nvrtc-cu12")}
