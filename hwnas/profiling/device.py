"""Fingerprints of the device and software a measurement was taken on."""

from __future__ import annotations

import os
import platform
import re
from importlib import metadata
from typing import Any

from hwnas._version import __version__


def cpu_fingerprint() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"type": "cpu", "name": model, "logical_cores": os.cpu_count(), "machine": platform.machine()}


def gpu_fingerprint(index: int = 0) -> dict[str, Any]:
    import torch

    props = torch.cuda.get_device_properties(index)
    return {"type": "gpu", "name": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "memory_gb": round(props.total_memory / 2**30, 1), "cuda_runtime": torch.version.cuda,
            "driver": _cuda_driver_version()}


def _cuda_driver_version() -> str | None:
    try:
        from cuda.bindings import driver  # cuda-python, optional
    except ImportError:
        return None
    err, version = driver.cuDriverGetVersion()
    return f"{version // 1000}.{version % 1000 // 10}" if int(err) == 0 else None


def nvidia_driver_release() -> str | None:
    """The NVIDIA kernel driver's release (e.g. '580.65.06'), from /proc/driver/nvidia/version;
    None where it is not there (no driver, not Linux)."""
    try:
        with open("/proc/driver/nvidia/version") as f:
            first = f.readline()
    except OSError:
        return None
    found = re.search(r"Kernel Module(?: for [\w-]+)?\s+([\d.]+)", first)
    return found.group(1) if found else first.strip() or None


def software_versions(*extra: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "hwnas": __version__}
    for dist in ("torch", "onnx", *extra):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out
