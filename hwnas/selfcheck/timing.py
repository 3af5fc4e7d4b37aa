"""The GPU timing path (hwnas/profiling/gpu_timing.py) on work of known length, against wall clock.

The work is torch.cuda._sleep, a kernel that spins for a given number of GPU clock cycles: one
length, and four times that length. GraphTimer (CUDA events around CUDA-graph replays, the
path every GPU table entry is timed with) must find the longer work four times as long, and its
time of a whole run must agree with the host's wall clock around it (the host waits for the GPU
at the end, so the wall clock covers the GPU's work plus the host's small launch costs). A timer
that times the host without waiting for the GPU, or scales its runs wrongly, fails one or the other.
"""

from __future__ import annotations

import statistics
import time

import torch

from hwnas.selfcheck.tolerance import Comparison

TARGET_MS = 1.0  # the shorter work's length
RUNS = 20  # runs per timed round; the longer work's round lasts ~80 ms, against ~0.1 ms of host costs
ROUNDS = 3
LINEARITY_TOL = 0.10  # the GPU's clock may move a little between rounds
WALL_TOL = 0.05


def verdicts(short_ms: float, long_ms: float, event_ms: float, wall_ms: float, factor: float = 4.0) -> list[Comparison]:
    """The timer's figures against what they must be: the longer work `factor` times the shorter
    (per run), and the events' time of a round within WALL_TOL of the wall clock's."""
    linear = abs(long_ms / short_ms / factor - 1) if short_ms > 0 else float("inf")
    wall = abs(event_ms / wall_ms - 1) if wall_ms > 0 else float("inf")
    return [Comparison(f"{factor:g}x the cycles takes {factor:g}x the time ({short_ms:.3f} -> {long_ms:.3f} ms a run)",
                       linear / LINEARITY_TOL, linear, 1, 0, f"{LINEARITY_TOL:.0%}"),
            Comparison(f"CUDA events vs wall clock over {RUNS} runs ({event_ms:.2f} vs {wall_ms:.2f} ms)",
                       wall / WALL_TOL, wall, 1, 0, f"{WALL_TOL:.0%}")]


def check_timing(device: torch.device) -> list[Comparison]:
    from hwnas.profiling.gpu_timing import GraphTimer

    with torch.cuda.device(device):
        stream = torch.cuda.Stream()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(1000)  # loads the kernel
        begin.record()
        torch.cuda._sleep(1_000_000)
        end.record()
        end.synchronize()
        cycles = max(1000, int(1_000_000 * TARGET_MS / max(begin.elapsed_time(end), 1e-3)))
        short = GraphTimer(lambda: torch.cuda._sleep(cycles), stream)
        long = GraphTimer(lambda: torch.cuda._sleep(4 * cycles), stream)
        shorts, longs, events, walls = [], [], [], []
        for _ in range(ROUNDS):  # interleaved: both see the same clocks
            shorts.append(short.run(RUNS) / RUNS)
            torch.cuda.synchronize()
            start = time.perf_counter()
            events.append(long.run(RUNS))
            torch.cuda.synchronize()  # the wall clock covers the GPU's work even if the timer did not wait
            walls.append((time.perf_counter() - start) * 1e3)
            longs.append(events[-1] / RUNS)
        short.close()
        long.close()
    return verdicts(statistics.median(shorts), statistics.median(longs), statistics.median(events),
                    statistics.median(walls))
