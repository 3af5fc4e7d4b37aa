"""Long work shows a progress bar with the time left (tqdm on stderr): export and bench. (The
table build's calibration: test_calibration.py; validation uses the same measuring loop.)"""

from __future__ import annotations

import time

import pytest

from hwnas import Runner, benchmark, export_onnx, progress, resolve_architecture

from conftest import REPO

TINY = str(REPO / "tests" / "data" / "tiny.json")


class Sleeper(Runner):
    def run(self, iterations: int) -> float:
        start = time.perf_counter()
        time.sleep(0.002 * iterations)
        return (time.perf_counter() - start) * 1e3


@pytest.fixture(autouse=True)
def bars_at_once(monkeypatch):
    """Bars drawn from the start (by default they wait DELAY_S, longer than this quick work), on
    the captured stderr (by default only on a terminal)."""
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    monkeypatch.setattr(progress, "ANYWHERE", True)


def test_quick_work_draws_no_bar(capsys):
    benchmark(Sleeper(), 2, warmup_ms=5.0, duration_s=0.02, iterations=2, progress=True)  # fixture: no delay
    assert "bench" in capsys.readouterr().err
    progress.DELAY_S = 60.0  # restored by the fixture
    benchmark(Sleeper(), 2, warmup_ms=5.0, duration_s=0.02, iterations=2, progress=True)
    assert capsys.readouterr().err == ""


def test_no_bar_off_a_terminal(capsys):
    progress.ANYWHERE = False  # restored by the fixture; capsys's stderr is no terminal
    benchmark(Sleeper(), 2, warmup_ms=5.0, duration_s=0.05, iterations=2, progress=True)
    assert capsys.readouterr().err == ""


def last_line(err: str, desc: str) -> str:
    return [line for line in err.replace("\r", "\n").splitlines() if line.startswith(desc)][-1]


def test_bench_shows_the_time_left(capsys):
    result = benchmark(Sleeper(), 2, warmup_ms=10.0, duration_s=0.2, iterations=5, progress=True)
    line = last_line(capsys.readouterr().err, "bench")
    assert "100%" in line and "<" in line
    assert len(result.latencies_ms) >= 5


def test_export_shows_its_steps(tmp_path, capsys):
    export_onnx(resolve_architecture(TINY), tmp_path / "t.onnx", batch=2, progress=True)
    line = last_line(capsys.readouterr().err, "export")
    assert "4/4" in line and "write" in line


def test_no_progress_when_not_asked(tmp_path, capsys):
    benchmark(Sleeper(), 2, warmup_ms=5.0, duration_s=0.02, iterations=2)
    export_onnx(resolve_architecture(TINY), tmp_path / "t.onnx", batch=2)
    assert capsys.readouterr().err == ""
