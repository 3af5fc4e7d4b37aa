"""trtexec-style benchmarking: warm-up by time, then iterations for at least a duration.

Quantities as trtexec reports them: latency min/mean/median/p90/p95/p99/max over the timed
iterations (one batch each), the coefficient of variation (trtexec warns above 1%; we warn
above 2.5% on these shared CPU machines), throughput in images/s (batch x iterations /
wall time of the timed phase).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

from hwnas.profiling.protocol import Runner
from hwnas.progress import progress_bar

COV_WARNING = 0.025


@dataclass(frozen=True)
class BenchResult:
    latencies_ms: list[float]
    wall_s: float
    batch: int

    def percentile(self, q: float) -> float:
        xs = sorted(self.latencies_ms)
        pos = (len(xs) - 1) * q / 100
        lo, hi = math.floor(pos), math.ceil(pos)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    @property
    def cov(self) -> float:
        xs = self.latencies_ms
        return statistics.stdev(xs) / statistics.fmean(xs) if len(xs) > 1 else 0.0

    def summary(self) -> dict[str, Any]:
        xs = self.latencies_ms
        return {
            "batch": self.batch, "iterations": len(xs),
            "latency_ms": {"min": min(xs), "mean": statistics.fmean(xs), "median": statistics.median(xs),
                           "p90": self.percentile(90), "p95": self.percentile(95), "p99": self.percentile(99),
                           "max": max(xs)},
            "throughput_ips": self.batch * len(xs) / self.wall_s,
            "cov": self.cov, "cov_warning": self.cov > COV_WARNING,
        }


def benchmark(runner: Runner, batch: int, warmup_ms: float = 200.0, duration_s: float = 3.0,
              iterations: int = 10, progress: bool = False) -> BenchResult:
    """Warm up for warmup_ms, then time single runs until both duration_s and iterations are reached.

    progress: a bar on stderr over the planned time (warm-up + duration), with the time left."""
    planned_s = warmup_ms / 1e3 + duration_s
    with progress_bar(planned_s, "bench", "s", progress, by_time=True) as bar:
        shown = 0.0

        def show(elapsed_s: float) -> None:
            nonlocal shown
            step = min(elapsed_s, planned_s) - shown
            if step > 0:
                bar.update(step)
                shown += step

        spent = 0.0
        while spent < warmup_ms:
            spent += runner.run(1)
            show(spent / 1e3)
        latencies: list[float] = []
        start = time.perf_counter()
        while len(latencies) < iterations or time.perf_counter() - start < duration_s:
            latencies.append(runner.run(1))
            show(spent / 1e3 + time.perf_counter() - start)
        wall_s = time.perf_counter() - start
    return BenchResult(latencies, wall_s, batch)
