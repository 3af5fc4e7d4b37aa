"""A latency backend whose times are a function of the graph alone, for tests of table builds.

Its measurements are reproducible, so a sharded build must reproduce a single build exactly.
`python fake_backend.py ARGS` runs the hwnas command with this backend registered as 'fake'
(each load takes LOAD_S of wall time, like a model export or engine build, so that a build
lasts long enough to be killed mid-way).

`DriftingBackend` is the same device with a speed that changes over time: its runners share a
virtual clock (milliseconds, advanced by every run and every load) and every run takes the
graph's time times `speed(clock)`, so a test sets exactly how the machine drifts or bursts.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
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


class Clock:
    """Virtual time in ms, shared by the runners of one device; `speed(t)` scales every run at t."""

    def __init__(self, speed: Callable[[float], float]):
        self.t, self.speed = 0.0, speed

    def spend(self, ms: float) -> float:
        took = ms * self.speed(self.t)
        self.t += took
        return took


class DriftingRunner(Runner):
    def __init__(self, ms: float, clock: Clock):
        self.ms, self.clock = ms, clock
        self.runs = 0

    def run(self, iterations: int) -> float:
        self.runs += iterations
        return sum(self.clock.spend(self.ms) for _ in range(iterations))


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

    def graph_ms(self, module: nn.Module, input_shapes: Sequence[tuple[int, ...]]) -> float:
        params = sum(p.numel() for p in module.parameters())
        inputs = sum(math.prod(s) for s in input_shapes)
        return (0.02 + 1e-5 * params + 1e-6 * inputs) * self.slowdown

    def load(self, module: nn.Module, input_shapes: Sequence[tuple[int, ...]]) -> Runner:
        if self.load_s:
            time.sleep(self.load_s)
        return FakeRunner(self.graph_ms(module, input_shapes))


class DriftingBackend(FakeBackend):
    """The fake device whose speed follows `speed(t)` over virtual time (ms); a load takes `load_ms`."""

    def __init__(self, speed: Callable[[float], float], load_ms: float = 60.0, **kw: Any):
        super().__init__(**kw)
        self.clock, self.load_ms = Clock(speed), load_ms
        self.runners: list[DriftingRunner] = []

    def load(self, module: nn.Module, input_shapes: Sequence[tuple[int, ...]]) -> Runner:
        self.clock.t += self.load_ms
        runner = DriftingRunner(self.graph_ms(module, input_shapes), self.clock)
        self.runners.append(runner)
        return runner


class SlowerFakeBackend(FakeBackend):
    """The fake device 13% slower (for `hwnas predict --check` through the command line)."""

    def __init__(self, precision: str = "fp32", threads: int | None = None):
        super().__init__(precision, threads, slowdown=1.13)


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
