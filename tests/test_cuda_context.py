"""The CUDA launcher's context and device handling, against a fake driver that keeps a current
context per thread as the real one does.

What a CPU machine can show: which context is current when the module is loaded and when each
kernel is launched, on which device's stream, and that the caller's context is back afterwards,
also on a new thread (autograd's backward runs on one, where no context is current). What it
cannot show: that the real driver accepts these calls and that the kernels compute the right
thing on a GPU (tests marked gpu in test_kernels.py).
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch

from hwnas.kernels import cuda
from hwnas.kernels.segments import CSegmentTable

NO_CONTEXT = 0


class FakeDriver:
    """cuda.bindings.driver's calls the launcher makes; contexts are ints, 100 + device."""

    def __init__(self) -> None:
        self.thread = threading.local()
        self.events: list[tuple] = []

    def current(self) -> int:
        return getattr(self.thread, "context", NO_CONTEXT)

    def cuInit(self, flags):
        return (0,)

    def cuDeviceGet(self, index):
        return (0, index)

    def cuDevicePrimaryCtxRetain(self, device):
        self.events.append(("retain", device))
        return (0, 100 + device)

    def cuCtxGetCurrent(self):
        return (0, self.current())

    def cuCtxSetCurrent(self, context):
        self.thread.context = int(context)
        return (0,)

    def cuModuleLoadData(self, image):
        self.events.append(("load", image, self.current()))
        return (0, ("module", self.current()))

    def cuModuleGetFunction(self, module, name):
        return (0, (module, name.decode()))

    def cuLaunchKernel(self, func, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
        (module, name) = func
        self.events.append(("launch", name, module[1], stream, self.current()))
        return (0,)


@pytest.fixture
def fake(monkeypatch):
    driver = FakeDriver()
    monkeypatch.setattr(cuda, "driver", lambda: driver)
    monkeypatch.setattr(cuda, "cached_cubin", lambda arch: f"cubin {arch}".encode())
    capabilities = {0: (8, 0), 1: (9, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: capabilities[index])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda index=None: SimpleNamespace(cuda_stream=5000 + index))
    for cached in (cuda.primary_context, cuda.functions):
        cached.cache_clear()
    yield driver
    for cached in (cuda.primary_context, cuda.functions):
        cached.cache_clear()


def tensor_on(index: int, dtype=torch.float32):
    """What launch reads of a CUDA tensor: its device and dtype."""
    return SimpleNamespace(device=torch.device("cuda", index), dtype=dtype)


def launch(index: int, dtype=torch.float32) -> None:
    table = CSegmentTable(count=1, N=1, C=1, H=4, W=4)
    cuda.launch("forward", tensor_on(index, dtype), [1, 2, 3], table, total=16)  # type: ignore[arg-type]


def test_a_tensor_on_another_device_loads_and_launches_there(fake):
    fake.cuCtxSetCurrent(100)  # the caller works on device 0 (torch's current device)
    launch(1)
    launch(1, torch.bfloat16)
    launch(0)
    loads = [e for e in fake.events if e[0] == "load"]
    assert loads == [("load", b"cubin sm_90", 101), ("load", b"cubin sm_80", 100)], fake.events
    launches = [e for e in fake.events if e[0] == "launch"]
    # (kernel, context its module was loaded in, stream, context current at the launch)
    assert launches == [("launch", "mixed_dw_forward_f32", 101, 5001, 101),
                        ("launch", "mixed_dw_forward_bf16", 101, 5001, 101),
                        ("launch", "mixed_dw_forward_f32", 100, 5000, 100)]
    assert fake.current() == 100  # the caller's context is current again


def test_a_thread_without_a_context_gets_the_devices_primary_context(fake):
    """autograd's backward runs on a worker thread: no context may be current there."""
    seen: list[int] = []

    def backward_thread():
        seen.append(fake.current())
        launch(1)
        seen.append(fake.current())

    worker = threading.Thread(target=backward_thread)
    worker.start()
    worker.join()
    assert seen == [NO_CONTEXT, NO_CONTEXT]
    assert [e for e in fake.events if e[0] == "launch"] == [("launch", "mixed_dw_forward_f32", 101, 5001, 101)]


def test_the_primary_context_is_retained_once_per_device(fake):
    for index in (0, 1, 0, 1):
        launch(index)
    assert [e for e in fake.events if e[0] == "retain"] == [("retain", 0), ("retain", 1)]


def test_a_cubin_the_driver_refuses_names_both_versions(fake, monkeypatch):
    """NVRTC 13 beside a driver for CUDA 12 (torch and the extra of different majors)."""
    from hwnas.errors import HwnasError
    from hwnas.kernels import nvrtc

    monkeypatch.setattr(fake, "cuModuleLoadData", lambda image: (222,), raising=False)  # UNSUPPORTED_PTX_VERSION
    monkeypatch.setattr(fake, "cuDriverGetVersion", lambda: (0, 12080), raising=False)
    monkeypatch.setattr(nvrtc, "version", lambda: (13, 0))
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    with pytest.raises(HwnasError, match=r"cuModuleLoadData\(sm_90\) failed \(222\): the kernels were compiled by "
                                         r"NVRTC 13\.0, the driver supports CUDA 12\.8; .*hwnas\[cuda12\]"):
        launch(1)
    assert fake.current() == NO_CONTEXT  # the context is restored on the way out
