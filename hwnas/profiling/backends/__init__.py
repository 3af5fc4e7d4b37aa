"""Profiling backends, registered by name and imported only when used."""

from __future__ import annotations

import importlib
from typing import Any

from hwnas.errors import HwnasError
from hwnas.profiling.backends.base import Backend

# name -> (module, class, modules it needs, extra that installs them)
REGISTRY: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "ort": ("hwnas.profiling.backends.ort", "OrtBackend", ("onnxruntime",), "core"),
    "torch": ("hwnas.profiling.backends.torch_eager", "TorchBackend", ("torch",), "core"),
    "tensorrt": ("hwnas.profiling.backends.tensorrt", "TensorRTBackend", ("tensorrt",), "gpu"),
    "none": ("hwnas.profiling.backends.none", "NoneBackend", (), "core"),
}


def get_backend(name: str, **options: Any) -> Backend:
    if name not in REGISTRY:
        raise HwnasError(f"unknown backend '{name}'; choose one of {', '.join(REGISTRY)}")
    module_name, class_name, needs, extra = REGISTRY[name]
    for dep in needs:
        try:
            importlib.import_module(dep)
        except ImportError:
            how = "pip install 'hwnas[gpu]' on a machine with an NVIDIA GPU" if extra == "gpu" \
                else "pip install hwnas"
            raise HwnasError(f"backend '{name}' needs the Python module '{dep}', which is not installed; "
                             f"install it with: {how}") from None
    # (tensorrt-stubs installs a stub-only 'tensorrt' that imports as an empty namespace;
    # the TensorRT backend checks for the real library itself.)
    cls = getattr(importlib.import_module(module_name), class_name)
    options = {k: v for k, v in options.items() if v is not None}
    backend: Backend = cls(**options)
    return backend


__all__ = ["Backend", "REGISTRY", "get_backend"]
