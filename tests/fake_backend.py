"""A latency backend whose times are a function of the graph alone, for tests of table builds.

Its measurements are reproducible, so a sharded build must reproduce a single build exactly.
`python fake_backend.py ARGS` runs the hwnas command with this backend registered as 'fake'
(each load takes LOAD_S of wall time, like a model export or engine build, so that a build
lasts long enough to be killed mid-way).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from typing import Any

from torch import nn

from hwnas.profiling.backends import REGISTRY, Backend
from hwnas.profiling.protocol import Runner

LOAD_S = 0.2


class FakeRunner(Runner):
    def __init__(self, ms: float):
        self.ms = ms

    def run(self, iterations: int) -> float:
        return iterations * self.ms


class FakeBackend(Backend):
    name = "fake"

    def __init__(self, precision: str = "fp32", threads: int | None = None, device: str = "Fake GPU 1",
                 version: str = "1.0", load_s: float = 0.0, slowdown: float = 1.0):
        super().__init__(precision, threads)
        self.device, self.version, self.load_s = device, version, load_s
        self.slowdown = slowdown  # a device of the same type running slower (clocks, power, heat)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "precision": self.precision, "threads": self.threads,
                "device": {"type": "gpu", "name": self.device, "driver": "1.0"},
                "software": {"fakert": self.version}}

    def load(self, module: nn.Module, input_shapes: Sequence[tuple[int, ...]]) -> Runner:
        time.sleep(self.load_s)
        params = sum(p.numel() for p in module.parameters())
        inputs = sum(math.prod(s) for s in input_shapes)
        return FakeRunner((0.02 + 1e-5 * params + 1e-6 * inputs) * self.slowdown)


class SlowFakeBackend(FakeBackend):
    def __init__(self, precision: str = "fp32", threads: int | None = None):
        super().__init__(precision, threads, load_s=LOAD_S)


def register() -> None:
    REGISTRY["fake"] = (__name__, "SlowFakeBackend", (), "core")


if __name__ == "__main__":
    import fake_backend  # this file under its importable name, which the registry imports it by

    from hwnas.cli.main import main

    fake_backend.register()
    sys.exit(main(sys.argv[1:]))
