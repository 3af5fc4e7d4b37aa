"""The fused layer's safe fallback: its kernels prove themselves on first use, or are not used.

On its first use on a device and dtype, the fused multi-branch layer (FusedSupernetCell) checks
its kernels on a small problem against PyTorch's own ops and autograd (kernels.first_use: the
BN1 + ReLU prologue's forward and backward, training and eval; a few milliseconds). A pass is
remembered for the process, and on disk (in $HWNAS_CACHE/kernels, default ~/.cache/hwnas/kernels)
per GPU model, driver, NVRTC and kernel sources (CPU: per CPU and kernel sources), so later
processes skip the check. If the check fails, or the kernels fail to compile or load (CUDA, or the
CPU twin), hwnas prints one warning line naming `hwnas env --check` and the layer computes with
the eager SupernetCell instead: the unfused PyTorch path, correct and slower. A failure is not
remembered on disk: the next process checks again.

HWNAS_FUSED (read here and nowhere else):
  auto   (default) the check and the fallback, as above
  off    never the fused kernels: the unfused PyTorch path everywhere
  force  the fused kernels without the check; their errors propagate
"""

from __future__ import annotations

import functools
import hashlib
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from hwnas.environment import env_choice
from hwnas.errors import HwnasError

SETTING = "HWNAS_FUSED"
MODES = ("auto", "off", "force")
CHECK_VERSION = 1  # bump when the first-use check changes: verdicts on disk are keyed by it


def fused_mode() -> str:
    """HWNAS_FUSED: auto (default), off or force."""
    return env_choice(SETTING, MODES, " is not a setting: use auto (check the fused kernels on first use, fall "
                                      "back if they fail), off (never fused) or force (fused, unchecked)")


@dataclass(frozen=True)
class Decision:
    """Whether the fused layer runs its kernels on a device and dtype, and why."""

    fused: bool
    mode: str
    reason: str
    check_s: float = 0.0  # the first-use check's seconds, after loading the kernels (0: not run here)

    @property
    def path(self) -> str:
        return "fused" if self.fused else "eager"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, **asdict(self)}


_DECISIONS: dict[tuple[str, str], Decision] = {}  # (device, dtype) -> the process's verdict


def _device(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _key(device: torch.device, dtype: torch.dtype) -> tuple[str, str]:
    return str(_device(device)), str(dtype).removeprefix("torch.")


def decide(device: torch.device, dtype: torch.dtype) -> Decision:
    """The path the fused layer takes on `device` in `dtype`; in auto mode the first call checks."""
    mode = fused_mode()
    if mode == "off":
        return Decision(False, mode, f"{SETTING}=off")
    if mode == "force":
        return Decision(True, mode, f"{SETTING}=force: the kernels run unchecked")
    key = _key(device, dtype)
    known = _DECISIONS.get(key)
    if known is None:
        known = _DECISIONS[key] = _first_use(_device(device), dtype)
    return known


def use_fused(x: torch.Tensor) -> bool:
    """Whether the fused layer runs its kernels for the input x (the layer's forward asks).

    A graph being compiled (torch.compile) cannot run the check: it takes the verdict of an
    earlier eager call on the same device and dtype, and the fused path when there was none
    (call the layer once before compiling, or run `hwnas env --check`, for a checked one)."""
    mode = fused_mode()
    if mode != "auto":
        return mode == "force"
    known = _DECISIONS.get(_key(x.device, x.dtype))
    if known is not None:
        return known.fused
    if torch.compiler.is_compiling():
        return True
    if x.is_cuda and torch.cuda.is_current_stream_capturing():
        return False  # the check synchronises, which a CUDA graph capture forbids: unfused, this call only
    return decide(x.device, x.dtype).fused


def decisions() -> dict[str, dict[str, Any]]:
    """The verdicts of this process so far, by 'device dtype'."""
    return {f"{d} {t}": v.to_dict() for (d, t), v in _DECISIONS.items()}


def forget() -> None:
    """Drop the process's verdicts (the next use checks again, or reads the disk)."""
    _DECISIONS.clear()


# --- the verdict on disk ------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def source_hash() -> str:
    """The kernel sources and the Python that packs their arguments and checks them."""
    from hwnas.kernels import sources
    from hwnas.selfcheck import kernels as check, tolerance

    here = Path(sources.__file__).parent
    files = [sources.source_dir() / name for name in sources.FILES]
    files += [here / f"{name}.py" for name in ("ops", "segments", "cpu", "cuda", "nvrtc")]
    files += [Path(check.__file__), Path(tolerance.__file__)]
    digest = hashlib.sha256(str(CHECK_VERSION).encode())
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def machine_key(device: torch.device) -> list[str]:
    """What a verdict holds for besides the sources: the GPU model, its driver and NVRTC; the CPU."""
    if device.type != "cuda":
        from hwnas.kernels.cpu import library_key

        return ["cpu", library_key()]  # the CPU twin's own cache key: sources, flags, the CPU
    from hwnas.kernels import nvrtc
    from hwnas.profiling.device import _cuda_driver_version, nvidia_driver_release

    props = torch.cuda.get_device_properties(device)
    return ["cuda", props.name, f"sm_{props.major}{props.minor}", str(nvidia_driver_release()),
            str(_cuda_driver_version()), ".".join(map(str, nvrtc.version())), str(torch.version.cuda)]


def verdict_file(device: torch.device, dtype: torch.dtype) -> Path:
    from hwnas.cache import kernel_dir

    parts = [*machine_key(device), str(dtype), source_hash()]
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    return kernel_dir() / f"check-{device.type}-{str(dtype).removeprefix('torch.')}-{digest}.json"


def _remember(path: Path, device: torch.device, dtype: torch.dtype, worst: float, seconds: float) -> None:
    from hwnas import files

    try:
        files.write_json(path, {"device": str(device), "dtype": str(dtype), "passed": True, "worst": worst,
                                "seconds": round(seconds, 4), "checked": time.strftime("%Y-%m-%d %H:%M:%S"),
                                "machine": machine_key(device)})
    except (OSError, HwnasError):  # a cache that cannot be written only costs the next process a check
        pass


# --- the first use ------------------------------------------------------------------------------

def _first_use(device: torch.device, dtype: torch.dtype) -> Decision:
    from hwnas.selfcheck.check import one_line

    try:
        path: Path | None = verdict_file(device, dtype)
    except Exception:  # noqa: BLE001 - no key (NVRTC missing, ...): the check below says what is wrong
        path = None
    if path is not None and path.exists():
        return Decision(True, "auto", f"passed its check earlier ({path})")
    start = time.perf_counter()
    try:
        _load(device)
        start = time.perf_counter()
        from hwnas.selfcheck.kernels import first_use

        found = first_use(device, dtype)
    except Exception as exc:  # noqa: BLE001 - a compile or load error, or any other of the kernel path
        return _fall_back(device, dtype, f"they could not run: {one_line(exc)}", time.perf_counter() - start)
    seconds = time.perf_counter() - start
    worst = max(found, key=lambda c: c.worst)
    if not worst.ok:
        return _fall_back(device, dtype, f"they failed their check: {worst.what} is off by {worst.max_error:.3g}, "
                                         f"{worst.worst:.3g} times its tolerance", seconds)
    if path is not None:
        _remember(path, device, dtype, worst.worst, seconds)
    return Decision(True, "auto", f"passed its check (worst error: {100 * worst.worst:.3g}% of its tolerance)",
                    seconds)


def _load(device: torch.device) -> None:
    """Compile (once per machine: cached) and load the kernels for the device; their errors are
    the fallback's too."""
    if device.type == "cuda":
        from hwnas.kernels import cuda

        with cuda.current_context(device.index):
            cuda.functions(device.index)
    else:
        from hwnas.kernels.cpu import library

        library()


def _fall_back(device: torch.device, dtype: torch.dtype, reason: str, seconds: float) -> Decision:
    name = str(dtype).removeprefix("torch.")
    print(f"hwnas: warning: the fused layer's kernels are not used on {device} ({name}): {reason}; the layer runs "
          f"unfused there (the PyTorch path: correct, slower). Run 'hwnas env --check' to check every GPU path; "
          f"{SETTING}=force skips this check", file=sys.stderr, flush=True)
    return Decision(False, "auto", reason, seconds)
