"""The `none` backend: no device; tables with MACs and params only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from hwnas.errors import HwnasError
from hwnas.profiling.backends.base import Backend, Shape
from hwnas.profiling.device import software_versions
from hwnas.profiling.protocol import Runner


class NoneBackend(Backend):
    name = "none"
    measures_latency = False

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": None, "precision": self.precision, "threads": None,
                "device": {"type": "none"}, "software": software_versions()}

    def load(self, module: nn.Module, input_shapes: Sequence[Shape]) -> Runner:
        raise HwnasError("the 'none' backend measures no latency; choose --backend ort, torch or tensorrt")
