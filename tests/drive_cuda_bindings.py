"""Replays kernel launches through hwnas.kernels.cuda and the real cuda-bindings driver layer,
over the stand-in libcuda.so.1 of tests/libcuda_standin/ (run by tests/test_cuda_launch.py in a
virtual environment with cuda-bindings and a CPU build of torch).

    python drive_cuda_bindings.py JOB.json   (prints the result as JSON)

The job names the stand-in library, each kernel's parameter sizes (from the PTX) and the launches:
op, dtype, device, pointers, segment table (hex), total, grid, and the thread to launch from
("main", where device 0's primary context is current as torch leaves it, or "worker", a new
thread with no context, as autograd's backward). torch's CUDA pieces that a CPU build lacks
(device capability, current stream) are substituted, and the cubin is a text image.
"""

from __future__ import annotations

import ctypes
import json
import sys
import threading
from importlib import metadata
from types import SimpleNamespace


def main(job_path: str) -> None:
    job = json.loads(open(job_path).read())
    # Loaded first under its soname, so the dlopen("libcuda.so.1") of cuda-bindings gets this one.
    standin = ctypes.CDLL(job["libcuda"], mode=ctypes.RTLD_GLOBAL)
    standin.standin_log.restype = ctypes.c_char_p
    for kernel, sizes in job["layouts"].items():
        standin.standin_set_layout(kernel.encode(), len(sizes), (ctypes.c_int * len(sizes))(*sizes))

    import torch

    from hwnas.errors import HwnasError
    from hwnas.kernels import cuda
    from hwnas.kernels.nvrtc import check
    from hwnas.kernels.segments import CSegmentTable

    torch.cuda.get_device_capability = lambda index=None: (9, 0)
    torch.cuda.current_device = lambda: 0
    torch.cuda.current_stream = lambda index=None: SimpleNamespace(cuda_stream=0x5000 + index)
    cuda.cached_cubin = lambda arch: f"cubin for {arch}".encode()

    drv = cuda.driver()
    check(drv.cuCtxSetCurrent(cuda.primary_context(0)), "cuCtxSetCurrent")  # as torch leaves the main thread
    contexts = {int(cuda.primary_context(d)): f"ctx{d}" for d in range(3)}

    def current() -> str:
        return contexts.get(int(check(drv.cuCtxGetCurrent(), "cuCtxGetCurrent")), "none")

    results = []
    for spec in job["launches"]:
        like = SimpleNamespace(device=torch.device("cuda", spec["device"]), dtype=getattr(torch, spec["dtype"]))
        table = CSegmentTable.from_buffer_copy(bytes.fromhex(spec["table"]))
        seen: dict[str, str] = {}

        def run() -> None:
            seen["before"] = current()
            try:
                cuda.launch(spec["op"], like, spec["pointers"], table, spec["total"], spec["grid"])
            except Exception as exc:  # reported, not raised: the test shows it
                seen["error"] = f"{type(exc).__name__}: {exc}"
            seen["after"] = current()

        if spec["thread"] == "worker":
            worker = threading.Thread(target=run)
            worker.start()
            worker.join()
        else:
            run()
        results.append(seen)

    # A driver that refuses the module (a cubin of a newer CUDA than the driver's): the message
    # must name both versions, read through the real bindings.
    standin.standin_set_driver_version(12080)
    standin.standin_set_module_load_result(222)  # CUDA_ERROR_UNSUPPORTED_PTX_VERSION
    try:
        cuda.launch("forward", SimpleNamespace(device=torch.device("cuda", 2), dtype=torch.float32), [0, 0, 0],
                    CSegmentTable(), 1)
        refused = ""
    except HwnasError as exc:
        refused = str(exc)
    print(json.dumps({"cuda_bindings": metadata.version("cuda-bindings"), "launches": results, "refused": refused,
                      "current_at_end": current(), "log": standin.standin_log().decode()}))


if __name__ == "__main__":
    main(sys.argv[1])
