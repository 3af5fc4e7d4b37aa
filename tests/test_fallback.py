"""The fused layer's first-use check and its fallback (hwnas.selfcheck.fallback), on the CPU twin:
failures injected into the path the layer takes (a compiler that fails, a library that does not
load, a kernel that returns wrong values, a kernel source compiled wrong) must each give one warning
line and the eager layer's result; HWNAS_FUSED=force must surface them; a pass is remembered."""

from __future__ import annotations

import copy
import json
import shutil
import time

import pytest
import torch

from hwnas.cache import kernel_dir
from hwnas.errors import HwnasError
from hwnas.kernels import cpu
from hwnas.kernels.sources import source_dir
from hwnas.selfcheck import fallback
from hwnas.spaces import builtin
from hwnas.spaces.macro import Position
from hwnas.supernet import SupernetCell
from hwnas.supernet.fused import FusedSupernetCell
from wrong_kernels import inject

SPACE = builtin().spaces["latency19"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache folder of its own holding the CPU twin already built, no verdicts in the process."""
    built = cpu.build()
    monkeypatch.setenv("HWNAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HWNAS_FUSED", raising=False)
    folder = kernel_dir()
    folder.mkdir(parents=True)
    shutil.copy(built, folder / built.name)
    cpu.library.cache_clear()
    fallback.forget()
    yield folder
    cpu.library.cache_clear()
    fallback.forget()


def layer_and_reference(dtype=torch.float32):
    torch.manual_seed(0)
    ref = SupernetCell(SPACE, [0, 4, 9], Position("N", 8, 8, 7, 1)).to(dtype)
    return FusedSupernetCell(copy.deepcopy(ref)), ref, torch.randn(2, 8, 7, 7, dtype=dtype)


def step(layer, x):
    """Output and input gradient of a training step."""
    x = x.clone().requires_grad_()
    y = layer(x, [True, True, True])
    y.square().sum().backward()
    return y.detach(), x.grad


def warnings_of(capfd) -> list[str]:
    return [line for line in capfd.readouterr().err.splitlines() if line.startswith("hwnas: warning")]


def assert_eager(layer, ref, x, capfd, reason):
    """The layer computed with the eager cell (its result exactly), after one warning line."""
    got, want = step(layer, x), step(ref, x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    (line,) = warnings_of(capfd)
    dtype = str(x.dtype).removeprefix("torch.")
    assert line.startswith(f"hwnas: warning: the fused layer's kernels are not used on cpu ({dtype}): ")
    assert "hwnas env --check" in line and "runs unfused" in line and reason in line
    step(layer, x)  # a second use: no second warning
    assert warnings_of(capfd) == []
    decision = fallback.decide(x.device, x.dtype)
    assert decision.path == "eager" and reason in decision.reason


def test_a_pass_is_checked_once_and_remembered_on_disk(cache, capfd):
    layer, ref, x = layer_and_reference()
    got, want = step(layer, x), step(ref, x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    decision = fallback.decide(x.device, x.dtype)
    assert decision.fused and decision.reason.startswith("passed its check (")
    assert decision.check_s > 0
    (verdict,) = cache.glob("check-cpu-float32-*.json")
    assert warnings_of(capfd) == []
    fallback.forget()  # a new process: the verdict is read from the disk, not checked again
    assert fallback.decide(x.device, x.dtype).reason == f"passed its check earlier ({verdict})"
    assert fallback.verdict_file(x.device, torch.float64) != verdict  # per dtype


def test_the_check_is_cheap():
    """The check itself, once torch's operator machinery is loaded (the layer's own first call
    loads it anyway): a few milliseconds on an idle CPU; the bound leaves room for a busy one."""
    from hwnas.selfcheck.kernels import first_use

    first_use(torch.device("cpu"), torch.float32)
    start = time.perf_counter()
    found = first_use(torch.device("cpu"), torch.float32)
    assert time.perf_counter() - start < 2.0 and all(c.ok for c in found)


def test_a_compile_error_falls_back_and_force_surfaces_it(cache, capfd, monkeypatch, tmp_path):
    for lib in cache.glob("*.so"):
        lib.unlink()
    failing = tmp_path / "cxx"
    failing.write_text("#!/bin/sh\necho 'mixed_dw_cpu.cpp:1: error: injected compile error' >&2\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setenv("CXX", str(failing))
    layer, ref, x = layer_and_reference()
    assert_eager(layer, ref, x, capfd, "building the CPU kernel failed")
    assert not list(cache.glob("check-*.json"))  # a failure is not remembered
    monkeypatch.setenv("HWNAS_FUSED", "force")
    with pytest.raises(HwnasError, match="building the CPU kernel failed"):
        step(layer, x)


def test_a_load_error_falls_back_and_force_surfaces_it(cache, capfd, monkeypatch):
    (lib,) = cache.glob("*.so")
    lib.write_bytes(b"not a shared library")
    layer, ref, x = layer_and_reference()
    assert_eager(layer, ref, x, capfd, "OSError")
    monkeypatch.setenv("HWNAS_FUSED", "force")
    with pytest.raises(OSError):
        step(layer, x)


@pytest.mark.parametrize("kernel", ["forward", "grad_input_bn", "grad_weight"])
def test_wrong_values_fall_back_and_force_surfaces_them(cache, capfd, monkeypatch, kernel):
    inject(monkeypatch, kernel)
    layer, ref, x = layer_and_reference()
    assert_eager(layer, ref, x, capfd, "times its tolerance")
    monkeypatch.setenv("HWNAS_FUSED", "force")  # unchecked: the wrong values reach the result
    fused, eager = step(layer, x), step(ref, x)
    assert warnings_of(capfd) == []
    assert any(not torch.allclose(f, e, rtol=1e-4, atol=1e-4) for f, e in zip(fused, eager)) or kernel == "grad_weight"


def test_a_kernel_source_compiled_wrong_falls_back(cache, capfd, monkeypatch, tmp_path):
    """The CPU twin built from a mutated source (a leaky ReLU in the BN prologue), through the
    real build: the check must catch it."""
    sources = tmp_path / "kernels"
    shutil.copytree(source_dir(), sources)
    header = sources / "mixed_dw.h"
    text = header.read_text()
    relu = "return a > Acc(0) ? a : Acc(0);"
    assert relu in text
    header.write_text(text.replace(relu, "return a > Acc(0) ? a : Acc(0.01) * a;"))
    monkeypatch.setattr(cpu, "source_dir", lambda: sources)
    layer, ref, x = layer_and_reference()
    assert_eager(layer, ref, x, capfd, "bn-relu forward")


def test_a_dtype_the_kernels_do_not_take_runs_unfused(cache, capfd, monkeypatch):
    from hwnas.kernels import KernelInputError

    layer, ref, x = layer_and_reference(torch.bfloat16)  # the CPU twin takes float32 and float64
    assert_eager(layer, ref, x, capfd, "dtype torch.bfloat16 not supported on cpu")
    monkeypatch.setenv("HWNAS_FUSED", "force")
    with pytest.raises(KernelInputError, match="not supported on cpu"):
        step(layer, x)


def test_off_never_checks_and_a_wrong_setting_is_refused(cache, capfd, monkeypatch):
    inject(monkeypatch, "forward")
    monkeypatch.setenv("HWNAS_FUSED", "off")
    layer, ref, x = layer_and_reference()
    for g, w in zip(step(layer, x), step(ref, x)):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert warnings_of(capfd) == [] and fallback.decisions() == {}
    monkeypatch.setenv("HWNAS_FUSED", "sometimes")
    with pytest.raises(HwnasError, match="HWNAS_FUSED='sometimes' is not a setting: use auto"):
        layer(x, [True, True, True])


def test_the_search_trainer_says_which_path_its_cells_run(cache, monkeypatch, tmp_path):
    from hwnas.search import load_npz
    from hwnas.search.training import RoundTrainer
    from tiny_search import make_tiny, tiny_config

    tiny = make_tiny(tmp_path)
    ds, slots = load_npz(tiny["npz"]), tiny["table"].macro().slots(1.0)

    def path(**settings):
        trainer = RoundTrainer(tiny["table"], [[0, 2] for _ in slots], [[] for _ in slots],
                               tiny_config(tiny, **settings), ds, ds, 1)
        return trainer.layer_path()

    assert path()["path"] == "eager" and "fused: true" in path()["reason"]  # the CPU's default: unfused
    fused = path(fused=True)
    assert fused["path"] == "fused" and fused["mode"] == "auto" and fused["reason"].startswith("passed its check")
    monkeypatch.setenv("HWNAS_FUSED", "off")
    assert path(fused=True) == {**path(fused=True), "path": "eager", "mode": "off", "reason": "HWNAS_FUSED=off"}


@pytest.mark.slow
def test_a_search_records_the_eager_path_after_a_failed_check(cache, capfd, monkeypatch, tmp_path):
    """No silent failure: one warning line, and the round's record in the log and the result says
    which path ran and why."""
    from hwnas.search import load_npz, search
    from tiny_search import make_tiny, tiny_config

    tiny = make_tiny(tmp_path)
    inject(monkeypatch, "grad_input_bn")
    cfg = tiny_config(tiny, rounds=1, epochs=1, fused=True, samples=4, edge_samples=0)
    result = search(tiny["table"], load_npz(tiny["npz"]), cfg, tmp_path / "run", progress=False)
    log = [json.loads(line) for line in (result.run_dir / "log.jsonl").read_text().splitlines()]
    (round_event,) = [r for r in log if r.get("event") == "round"]
    (history,) = json.loads((result.run_dir / "result.json").read_text())["history"]
    for layer in (round_event["layer"], history["layer"]):
        assert layer["path"] == "eager" and layer["reason"].startswith("they failed their check: bn-relu grad h")
    assert len(warnings_of(capfd)) == 1
