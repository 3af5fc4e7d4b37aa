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
              iterations: int = 10) -> BenchResult:
    """Warm up for warmup_ms, then time single runs until both duration_s and iterations are reached."""
    spent = 0.0
    while spent < warmup_ms:
        spent += runner.run(1)
    latencies: list[float] = []
    start = time.perf_counter()
    while len(latencies) < iterations or time.perf_counter() - start < duration_s:
        latencies.append(runner.run(1))
    return BenchResult(latencies, time.perf_counter() - start, batch)
