"""The torch CPU backend keeps freed memory in the process (hwnas.profiling.cpu_allocator), so a
large tensor is not mapped and unmapped by the kernel on every run. Checked through glibc's own
account of its mmapped bytes (mallinfo2), against the allocator left as it is."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import pytest

from hwnas.errors import HwnasError
from hwnas.profiling import cpu_allocator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Allocate and free a 64 MiB tensor after the backend is made; report glibc's mmapped bytes while it lived.
PROBE = r"""
import ctypes, json, torch
from hwnas.profiling.backends import get_backend
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
backend = get_backend("torch", threads=1)
before = libc.mallinfo2().hblkhd
x = torch.ones(16 * 2**20)
during = libc.mallinfo2().hblkhd
del x
print(json.dumps({"mmapped": during - before, "allocator": backend.describe()["allocator"]}))
"""


def _glibc_with_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


def probe(setting: str) -> dict[str, object]:
    env = {**os.environ, cpu_allocator.ENV: setting, "PYTHONPATH": ROOT}
    env.pop("LD_PRELOAD", None)
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc 2.33+ (mallinfo2) to read the allocator's "
                                                         "mmapped bytes; other C libraries are left as they are")
def test_a_large_tensor_stays_in_the_heap_when_freed_memory_is_kept():
    kept, system = probe("kept"), probe("system")
    assert "freed memory kept" in str(kept["allocator"])
    assert "as it is" in str(system["allocator"])
    assert kept["mmapped"] == 0
    assert system["mmapped"] >= 64 * 2**20  # the control: glibc as it is maps a block this large


def test_a_wrong_setting_is_refused_with_the_choices(monkeypatch):
    monkeypatch.setenv(cpu_allocator.ENV, "jemalloc")
    with pytest.raises(HwnasError, match="HWNAS_CPU_ALLOCATOR='jemalloc': use 'kept'.*or 'system'"):
        cpu_allocator.requested()


def test_the_setting_is_recorded_in_a_torch_cpu_table_meta():
    from hwnas.profiling.backends import get_backend

    described = get_backend("torch", threads=1).describe()
    assert described["allocator"] == cpu_allocator.keep_freed_memory()


def test_a_cpu_search_keeps_freed_memory_and_logs_it(tmp_path):
    from hwnas.search import load_npz, search
    from tiny_search import make_tiny, tiny_config

    tiny = make_tiny(tmp_path)
    cfg = tiny_config(tiny, rounds=1, epochs=1, samples=4, edge_samples=0)
    result = search(tiny["table"], load_npz(tiny["npz"]), cfg, tmp_path / "run", progress=False, device="cpu")
    log = [json.loads(line) for line in (result.run_dir / "log.jsonl").read_text().splitlines()]
    (round_event,) = [r for r in log if r.get("event") == "round"]
    assert round_event["allocator"] == cpu_allocator.keep_freed_memory()
