"""Eager PyTorch: on the CPU (wall time), or on a CUDA GPU (CUDA events around CUDA-graph replays)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hwnas.errors import HwnasError
from hwnas.profiling.backends.base import Backend, Shape
from hwnas.profiling.cpu_allocator import keep_freed_memory
from hwnas.profiling.device import cpu_fingerprint, gpu_fingerprint, software_versions
from hwnas.profiling.gpu_timing import TIMING_METHOD, GraphTimer
from hwnas.profiling.protocol import Runner


class TorchRunner(Runner):
    """CPU: wall time of back-to-back runs. CUDA: GPU time from CUDA-graph replays (gpu_timing),
    so that a few-microsecond operation is not timed by Python's launch cost."""

    def __init__(self, module: nn.Module, inputs: list[torch.Tensor], cuda_graph: bool = True):
        self.module, self.inputs = module, inputs
        self.timer: GraphTimer | None = None
        if inputs[0].is_cuda:
            self.timer = GraphTimer(self._forward, torch.cuda.Stream(inputs[0].device), cuda_graph)

    @torch.no_grad()
    def _forward(self) -> None:
        self.module(*self.inputs)

    @torch.inference_mode()
    def run(self, iterations: int) -> float:
        if self.timer is not None:
            return self.timer.run(iterations)
        module, inputs = self.module, self.inputs
        start = time.perf_counter()
        for _ in range(iterations):
            module(*inputs)
        return (time.perf_counter() - start) * 1e3

    def close(self) -> None:
        if self.timer is not None:
            self.timer.close()


class TorchBackend(Backend):
    name = "torch"
    precisions = ("fp32", "fp16")

    def __init__(self, precision: str = "fp32", threads: int | None = None, device: str | None = None):
        super().__init__(precision, threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cpu":
            if precision != "fp32":
                raise HwnasError("the torch backend on the CPU measures fp32 only; fp16 needs a CUDA GPU")
            # torch's intra-op thread count is process-wide; the backend owns it while it profiles.
            self.threads = threads or 1
            torch.set_num_threads(self.threads)
            self.allocator: str | None = keep_freed_memory()
        else:
            self.allocator = None  # torch's CUDA caching allocator, and CUDA graphs, keep memory

    def describe(self) -> dict[str, Any]:
        device = gpu_fingerprint(self.device.index or 0) if self.device.type == "cuda" else cpu_fingerprint()
        described = {"name": self.name, "version": torch.__version__, "precision": self.precision,
                     "threads": self.threads, "device": device, "software": software_versions()}
        if self.allocator:
            described["allocator"] = self.allocator
        if self.device.type == "cuda":
            described["timing"] = TIMING_METHOD
        return described

    def load(self, module: nn.Module, input_shapes: Sequence[Shape]) -> Runner:
        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        module = module.eval().to(self.device, dtype)
        gen = torch.Generator().manual_seed(0)
        inputs = [torch.randn(shape, generator=gen).to(self.device, dtype) for shape in input_shapes]
        return TorchRunner(module, inputs)
