"""onnxruntime, CPU execution provider: the embedded default backend.

Inputs and outputs are bound once as OrtValues (io_binding), so a timed run copies nothing
between host buffers; the thread count is explicit (default 1: on a shared machine one
thread is disturbed least by the other jobs) and recorded in the table.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from hwnas.profiling.backends.base import Backend, Shape
from hwnas.profiling.device import cpu_fingerprint, software_versions
from hwnas.profiling.onnx_io import module_to_onnx
from hwnas.profiling.protocol import Runner


class OrtRunner(Runner):
    def __init__(self, session: Any, inputs: Sequence[np.ndarray]):
        import onnxruntime as ort

        self.session = session
        self.binding = session.io_binding()
        self._keep = [ort.OrtValue.ortvalue_from_numpy(x) for x in inputs]
        for meta, value in zip(session.get_inputs(), self._keep):
            self.binding.bind_ortvalue_input(meta.name, value)
        for meta in session.get_outputs():
            self.binding.bind_output(meta.name)
        session.run_with_iobinding(self.binding)  # allocates the outputs once; rebind them
        for meta, value in zip(session.get_outputs(), self.binding.get_outputs()):
            self.binding.bind_ortvalue_output(meta.name, value)

    def run(self, iterations: int) -> float:
        run, binding = self.session.run_with_iobinding, self.binding
        start = time.perf_counter()
        for _ in range(iterations):
            run(binding)
        return (time.perf_counter() - start) * 1e3

    def close(self) -> None:
        self.binding = self.session = None


# An InferenceSession's idle intra-op workers spin for a while after each run (onnxruntime's
# default). The protocol interleaves many graphs, each in its own InferenceSession, whose spinning
# workers then take the cores from the one being timed: on 2 cores at 2 threads, entries ran 3.5x
# slower and their ratios to the reference scattered by 35%, against 5-7% without. One thread has
# no workers; the setting is recorded from two on.
SPINNING = "session.intra_op.allow_spinning"


class OrtBackend(Backend):
    name = "ort"

    def __init__(self, precision: str = "fp32", threads: int | None = None):
        super().__init__(precision, threads or 1)

    def session(self, model: bytes | str) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads or 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.add_session_config_entry(SPINNING, "0")
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        described = {"name": self.name, "version": ort.__version__, "provider": "CPUExecutionProvider",
                     "precision": self.precision, "threads": self.threads, "device": cpu_fingerprint(),
                     "software": software_versions("onnxruntime")}
        if (self.threads or 1) > 1:
            described["spinning"] = "off"
        return described

    def load(self, module: nn.Module, input_shapes: Sequence[Shape]) -> Runner:
        return self.load_onnx(module_to_onnx(module, input_shapes), input_shapes)

    def load_onnx(self, model: bytes | str, input_shapes: Sequence[Shape]) -> OrtRunner:
        rng = np.random.default_rng(0)
        inputs = [rng.standard_normal(shape, dtype=np.float32) for shape in input_shapes]
        return OrtRunner(self.session(model), inputs)
