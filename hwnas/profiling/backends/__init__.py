"""Profiling backends, registered by name and imported only when used.

The built-in backends are listed in `REGISTRY` (imported on first use); a user adds their own
with `register_backend` (a `Backend` subclass; its `name` is the one tables record).
"""

from __future__ import annotations

import importlib
import re
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
_REGISTERED: dict[str, type[Backend]] = {}


def backend_names() -> list[str]:
    """The built-in backends, then the registered ones."""
    return [*REGISTRY, *_REGISTERED]


def register_backend(backend: type[Backend], *, replace: bool = False) -> type[Backend]:
    """Make a profiling backend available under its `name` to `get_backend`, `build_table` and
    `validate_table` (which finds a table's backend by the name stored in it).

    `backend` is a subclass of `Backend` with a class attribute `name`, `describe()` and
    `load(module, input_shapes) -> Runner`. Returns it, so it also works as a class decorator.
    """
    if not (isinstance(backend, type) and issubclass(backend, Backend)):
        raise TypeError(f"register_backend takes a subclass of hwnas.Backend, got {backend!r}")
    name = getattr(backend, "name", None)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise HwnasError(f"backend class {backend.__name__} needs a class attribute 'name' (letters, digits, "
                         f"'_', '.', '-'), got {name!r}")
    if name in REGISTRY:
        raise HwnasError(f"'{name}' is a built-in backend; give {backend.__name__} another name")
    if name in _REGISTERED and _REGISTERED[name] is not backend and not replace:
        raise HwnasError(f"a backend named '{name}' is already registered ({_REGISTERED[name].__name__}); "
                         f"pass replace=True to replace it")
    _REGISTERED[name] = backend
    return backend


def get_backend(name: str, **options: Any) -> Backend:
    """An instance of the backend called `name`; options (precision, threads) left None are defaulted."""
    options = {k: v for k, v in options.items() if v is not None}
    if name in _REGISTERED:
        return _REGISTERED[name](**options)
    if name not in REGISTRY:
        raise HwnasError(f"unknown backend '{name}'; choose one of {', '.join(backend_names())} "
                         f"(or register your own with hwnas.register_backend)")
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
    backend: Backend = cls(**options)
    return backend


__all__ = ["Backend", "REGISTRY", "backend_names", "get_backend", "register_backend"]
