"""GPU time of short work: CUDA events around CUDA-graph replays that hide the host's launch cost.

A single operation at batch 16 runs for a few microseconds on a GPU; launching it costs the
host about as much. Timing back-to-back launches would then measure the host. So the work is
captured into a CUDA graph holding enough back-to-back runs to keep the GPU busy for at least
GRAPH_MIN_MS; one replay costs the host a few microseconds, the replays queue up ahead of the
GPU, and the time between the events is the GPU's. Whole networks get one run per graph.
Only runs on a CUDA GPU; where there is none this module is imported but not used.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

GRAPH_MIN_MS = 0.2
MAX_RUNS_PER_GRAPH = 256
TIMING_METHOD = (f"CUDA events around CUDA-graph replays on one stream; each graph holds enough back-to-back runs "
                 f"to last >= {GRAPH_MIN_MS} ms, so the host's launch cost is hidden")


def graph_runs(single_run_ms: float) -> int:
    """Runs per CUDA graph so that one replay keeps the GPU busy for at least GRAPH_MIN_MS."""
    return max(1, min(MAX_RUNS_PER_GRAPH, math.ceil(GRAPH_MIN_MS / max(single_run_ms, 1e-4))))


class GraphTimer:
    """Times `enqueue` (work launched on the current stream, nothing synchronising) on `stream`.

    With graphs, run(n) replays a graph of `runs_per_graph` runs ceil(n / runs_per_graph) times
    and returns the elapsed time scaled to n runs; without, it launches n runs back to back.
    """

    def __init__(self, enqueue: Callable[[], None], stream: torch.cuda.Stream, cuda_graph: bool = True,
                 warmup_runs: int = 3):
        self.enqueue, self.stream = enqueue, stream
        self.graph: torch.cuda.CUDAGraph | None = None
        self.runs_per_graph = 1
        stream.wait_stream(torch.cuda.current_stream())  # the inputs were written on the caller's stream
        with torch.cuda.stream(stream):  # before capture, on a side stream (lazy init, workspaces)
            for _ in range(warmup_runs):
                enqueue()
        stream.synchronize()
        if cuda_graph:
            self.graph = self._capture(1)
            self.runs_per_graph = graph_runs(self.run(10) / 10)
            if self.runs_per_graph > 1:
                self.graph = self._capture(self.runs_per_graph)

    def _capture(self, runs: int) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            for _ in range(runs):
                self.enqueue()
        return graph

    def run(self, iterations: int) -> float:
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(self.stream):
            begin.record(self.stream)
            if self.graph is not None:
                replays = math.ceil(iterations / self.runs_per_graph)
                for _ in range(replays):
                    self.graph.replay()
                done = replays * self.runs_per_graph
            else:
                for _ in range(iterations):
                    self.enqueue()
                done = iterations
            end.record(self.stream)
        end.synchronize()
        return float(begin.elapsed_time(end)) * iterations / done

    def close(self) -> None:
        self.graph = None
