"""Whole-or-nothing writes, one-line read errors, output locks, and the option ranges."""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwnas import files
from hwnas.cli import options
from hwnas.errors import HwnasError, SpecError


def test_write_is_whole_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "out.json"
    files.write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not mkstemp's 0600


def test_failed_writer_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "out.png"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with files.atomic_path(path) as tmp:
            assert tmp.parent == path.parent and tmp.suffix == ".png"  # writers infer the format
            tmp.write_text("half of a new fi")
            raise RuntimeError("writer failed")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.png"]


@pytest.mark.parametrize("where", ["folder", "under_file", "proc"])
def test_unwritable_paths_are_one_line_errors(tmp_path, where):
    (tmp_path / "f").write_text("x")
    path = {"folder": tmp_path, "under_file": tmp_path / "f" / "out.json", "proc": "/proc/hwnas-out.json"}[where]
    with pytest.raises(HwnasError) as info:
        files.check_writable(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    with pytest.raises((HwnasError, OSError)):
        files.write_json(path, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_full_disk_message_says_how_to_fix():
    exc = OSError(28, "No space left on device", "/data/out.onnx")
    msg = files.os_error_message(exc)
    assert "no space left" in msg and "/data/out.onnx" in msg and "free" in msg


@given(st.binary(max_size=300))
@settings(max_examples=60, deadline=None)
def test_any_bytes_read_as_json_fail_in_one_line(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("r") / "t.json"
    path.write_bytes(data)
    try:
        files.check_format(files.read_json(path, "lookup table"), path, "hwnas-lookup-table", 1, "hwnas lookup table",
                           "rebuild it")
    except HwnasError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
    else:
        raise AssertionError("random bytes accepted as a table")


def test_read_errors_name_the_problem(tmp_path):
    good = json.dumps({"format": "f", "version": 1, "x": [1, 2, 3]})
    (tmp_path / "trunc.json").write_text(good[:-5])
    (tmp_path / "cut_in_string.json").write_text(good[:13])
    (tmp_path / "bin.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    (tmp_path / "future.json").write_text(json.dumps({"format": "f", "version": 7}))
    cases = {"trunc.json": "truncated", "cut_in_string.json": "truncated", "bin.json": "binary", "future.json": "upgrade hwnas",
             "missing.json": "no such file"}
    for name, words in cases.items():
        with pytest.raises(HwnasError, match=words):
            files.check_format(files.read_json(tmp_path / name), tmp_path / name, "f", 1, "thing", "rebuild")
    with pytest.raises(HwnasError, match="is a folder"):
        files.read_bytes(tmp_path)


def _hold_lock(path, ready, release):
    with files.exclusive(path):
        ready.set()
        release.wait(30)


def test_second_writer_is_refused_naming_the_first(tmp_path):
    path = tmp_path / "t.json"
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(path, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(HwnasError, match=f"another process \\(pid {holder.pid}"):
            with files.exclusive(path):
                pass
    finally:
        release.set()
        holder.join(30)
    with files.exclusive(path):  # free again once the holder is done
        pass
    assert not (tmp_path / "t.json.lock").exists()


def test_lock_dies_with_a_killed_holder(tmp_path):
    path = tmp_path / "t.json"
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(path, ready, release))
    holder.start()
    assert ready.wait(30)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(30)
    with files.exclusive(path):  # a stale lock file does not block
        pass


def test_kill_during_a_long_write_leaves_old_or_nothing(tmp_path):
    """SIGKILL while a large output is being written: the destination is absent (or the old one)."""
    script = textwrap.dedent(f"""
        import sys, time
        from hwnas import files
        with files.atomic_path({str(tmp_path / 'big.bin')!r}) as tmp:
            with open(tmp, "wb") as f:
                for _ in range(10_000):
                    f.write(b"x" * 65536)
                    f.flush()
                    time.sleep(0.01)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.getcwd()})
    deadline = time.time() + 60
    while not any(p.name.endswith(".tmp.bin") for p in tmp_path.iterdir()) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    assert not (tmp_path / "big.bin").exists()  # only the hidden temp file can remain, never the output


# ---------------------------------------------------------------------------------------------
# Ranges


@pytest.mark.parametrize("rng", [options.BATCH, options.THREADS, options.SEED, options.STEPS, options.ROUNDS,
                                 options.SAMPLES])
@given(text=st.one_of(st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True).map(repr), st.text(max_size=8)))
@settings(max_examples=80, deadline=None)
def test_int_ranges_accept_exactly_their_range(rng, text):
    try:
        value = int(text, 10)
    except ValueError:
        value = None
    ok = value is not None and rng.lo <= value <= rng.hi
    if ok:
        assert rng(text) == value
    else:
        with pytest.raises(argparse.ArgumentTypeError, match=rng.describe().split(" (")[0]):
            rng(text)


@pytest.mark.parametrize("rng", [options.SCALE, options.TARGET, options.ALPHA, options.BETA, options.WORKSPACE_GB,
                                 options.SECONDS, options.PERCENT])
@given(x=st.floats(allow_nan=True, allow_infinity=True))
@settings(max_examples=80, deadline=None)
def test_float_ranges_refuse_nan_inf_and_out_of_range(rng, x):
    inside = math.isfinite(x) and (x > rng.lo if rng.lo_open else x >= rng.lo) and (rng.hi is None or x <= rng.hi)
    if inside:
        assert rng(repr(x)) == x and rng.check(x, "f") == x
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            rng(repr(x))
        with pytest.raises(SpecError, match="f must be"):
            rng.check(x, "f")


def test_range_in_help_and_file_check():
    parser = argparse.ArgumentParser()
    options.add_batch(parser)
    assert "an integer in 1..65536" in parser.format_help()
    with pytest.raises(SpecError, match=r"batch must be an integer in 1\.\.65536 \(got True\)"):
        options.BATCH.check(True, "batch")
    assert options.BATCH.check(16.0, "batch") == 16
