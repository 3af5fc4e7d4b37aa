"""The profiling backend interface: "profile this module at these input shapes"."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from torch import nn

from hwnas.errors import HwnasError
from hwnas.profiling.protocol import Runner

Shape = tuple[int, ...]


class Backend(ABC):
    """Loads PyTorch modules onto a device as runnable graphs and describes that device."""

    name: ClassVar[str]
    measures_latency: ClassVar[bool] = True
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)

    def __init__(self, precision: str = "fp32", threads: int | None = None):
        if precision not in self.precisions:
            raise HwnasError(f"backend '{self.name}' supports precision {', '.join(self.precisions)}, "
                             f"not {precision}")
        self.precision = precision
        self.threads = threads

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Backend name and version, precision, threads, device fingerprint, software versions."""

    @abstractmethod
    def load(self, module: nn.Module, input_shapes: Sequence[Shape]) -> Runner:
        """The module as a graph on this backend, inputs bound, warm-up left to the protocol."""
