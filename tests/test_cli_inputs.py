"""Every bad input a one-line error, every output whole: a fuzz of the commands' numbers and
files, every kind of output path, and kills during writes.

Each failing case asserts exit 1 (bad input, environment) or 2 (usage), exactly one line on
stderr starting 'hwnas: ', no traceback, and no output file (nor a temporary one) left behind.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwnas import files
from hwnas.cli.main import build_parser, main
from hwnas.ranges import Range

REPO = Path(__file__).resolve().parents[1]
MACS_TABLE = REPO / "latency_tables" / "latency19_macs.json"
LATENCY_TABLE = REPO / "latency_tables" / "latency19_ort-cpu_b16.json"
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code, err, codes=(1, 2)):
    assert code in codes, (code, err)
    # 'hwnas: error: ...' (exit 1) or 'hwnas table build: error: ...' (usage, exit 2)
    assert err.count("\n") == 1 and re.match(r"hwnas( [a-z -]+)?: ", err) and "Traceback" not in err, err


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------
# Numeric options: every one is declared with a range; outside it, exit 2 naming the range.


def _commands(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, prefix + (name,))
    if prefix:
        yield prefix, parser


def _base_argv(path, parser, skip):
    """The shortest command line that parses (the values are placeholders; nothing runs)."""
    argv = list(path)
    # one option of each required mutually exclusive group (unless the fuzzed option is in it)
    chosen = {group._group_actions[0].dest for group in parser._mutually_exclusive_groups
              if group.required and skip not in {a.dest for a in group._group_actions}}
    for action in parser._actions:
        needed = action.required or not action.option_strings or action.dest in chosen
        if action.dest == skip or not needed or \
                isinstance(action, (argparse._SubParsersAction, argparse._HelpAction)):
            continue
        if isinstance(action.type, Range):
            value = str(action.type.lo + 1 if action.type.lo is not None else 1)
        else:
            value = str(next(iter(action.choices))) if action.choices else "x.json"
        if action.option_strings:
            argv.append(action.option_strings[0])
            if action.nargs != 0:
                argv.append(value)
        else:
            argv.append(value)
    return argv


NUMERIC = [(path, parser, action) for path, parser in _commands(build_parser())
           for action in parser._actions if isinstance(action.type, Range)]


def test_every_numeric_option_has_a_range():
    """No command declares a bare int or float: the range lives in hwnas.ranges and shows in --help."""
    bare = [(" ".join(path), a.option_strings) for path, parser in _commands(build_parser())
            for a in parser._actions if a.type in (int, float)]
    assert not bare, f"use hwnas.cli.options.add_number with a Range for: {bare}"
    seen = {a.option_strings[0] for _, _, a in NUMERIC}
    assert {"--batch", "--scale", "--threads", "--samples", "--seed", "--steps", "--rounds", "--target", "--alpha",
            "--beta", "--workspace", "--duration-s", "--warmup-ms", "--iterations"} <= seen
    for path, parser, action in NUMERIC:
        assert action.type.describe() in parser.format_help().replace("\n", " ").replace("  ", " ") or \
            action.type.describe()[:20] in " ".join(parser.format_help().split()), (path, action.option_strings)


def _number_texts():
    return st.one_of(st.integers(-2**40, 2**40).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                     st.sampled_from(["nan", "inf", "-inf", "1e400", "0", "-0", "", "1.5", "0x10", "ten"]))


@pytest.mark.parametrize("path, parser, action", NUMERIC,
                         ids=[f"{' '.join(p)} {a.option_strings[0]}" for p, _, a in NUMERIC])
@given(text=_number_texts())
@FUZZ
def test_numeric_option_fuzz(capsys, tmp_path, path, parser, action, text):
    flag = action.option_strings[0]
    argv = _base_argv(path, parser, action.dest) + [f"{flag}={text}"]  # '=': '-1e+16' is not an option
    try:
        expected = action.type(text)
    except argparse.ArgumentTypeError:
        expected = None
    if expected is None:
        before = set(os.listdir(tmp_path))
        code, out, err = run(capsys, *argv)
        assert_refused(code, err, codes=(2,))
        assert flag in err and action.type.describe() in err and out == ""
        assert set(os.listdir(tmp_path)) == before
    else:  # in range: parsed as the number it reads as (not run: that is the other tests' job)
        try:
            args = build_parser().parse_args(argv)
        finally:
            assert capsys.readouterr().err == ""
        assert getattr(args, action.dest) == expected
        assert math.isfinite(expected)
        lo, hi = action.type.lo, action.type.hi
        assert (lo is None or expected >= lo) and (hi is None or expected <= hi)


@pytest.mark.parametrize("argv", [
    ["table", "build", "--space", "latency19", "--macro", "latency", "--backend", "none", "--batch", "0"],
    ["table", "build", "--space", "latency19", "--macro", "latency", "--backend", "none", "--batch", "-16"],
    ["table", "build", "--space", "latency19", "--macro", "latency", "--backend", "none", "--scale", "0"],
    ["bench", "nsenet_gpu", "--batch", "0"],
    ["search", "--dry-run", "--table", str(MACS_TABLE), "--metric", "macs", "--target", "nan"],
    ["search", "--dry-run", "--table", str(MACS_TABLE), "--metric", "macs", "--target", "inf"],
    ["search", "--dry-run", "--table", str(MACS_TABLE), "--metric", "macs", "--target", "-300"],
])
def test_nonsense_numbers_refused_before_any_work(capsys, tmp_path, argv):
    out_file = tmp_path / "t.json"
    if argv[0] == "table":
        argv = argv + ["-o", str(out_file)]
    start = time.perf_counter()
    code, _, err = run(capsys, *argv)
    assert_refused(code, err, codes=(2,))
    assert "must be" in err and time.perf_counter() - start < 10
    assert not out_file.exists()


# ---------------------------------------------------------------------------------------------
# Files: corrupt bytes, truncations and wrong types in every file a command reads.


def _mutate(doc, rng: random.Random, value):
    """Replace one randomly chosen value (at any depth) of a JSON document with `value`."""
    doc = json.loads(json.dumps(doc))
    node, path = doc, []
    while isinstance(node, (dict, list)) and node and (not path or rng.random() < 0.7):
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        path.append(key)
        parent, node = node, node[key]
    if not path:
        return value
    parent[path[-1]] = value
    return doc


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats() | st.text(max_size=6),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                       max_size=3), max_leaves=6)

# (name, command line with {} for the file, the valid file its mutations start from)
READERS = [
    ("table show", ["table", "show", "{}"], MACS_TABLE),
    ("predict", ["predict", "--table", "{}", "nsenet_gpu"], MACS_TABLE),
    ("predict latency", ["predict", "--table", "{}", "nsenet_gpu", "--json"], LATENCY_TABLE),
    ("search", ["search", "--dry-run", "--table", "{}", "--metric", "latency", "--target", "8", "--steps", "2",
                "--json"], LATENCY_TABLE),
    ("arch show", ["arch", "show", "{}"], None),
    ("space show", ["space", "show", "{}"], None),
]


def _spec_document():
    from hwnas.spaces import builtin

    arch = builtin().networks["nsenet_gpu"]
    return {"networks": {"mine": arch.document()}}


def _valid(reader):
    name, _, source = reader
    if source is not None:
        return json.loads(source.read_text())
    if name == "space show":
        from hwnas.spaces import builtin

        return {"spaces": {"mine": builtin().spaces["latency19"].to_dict()}}
    return _spec_document()


def _check_reader(capsys, tmp_path, reader, data: bytes, suffix=".json"):
    path = tmp_path / f"input{suffix}"
    path.write_bytes(data)
    argv = [str(path) if a == "{}" else a for a in reader[1]]
    code, _, err = run(capsys, *argv)
    if code != 0:
        assert_refused(code, err, codes=(1,))
    assert leftovers(tmp_path) == [path.name]
    return code


@pytest.mark.parametrize("reader", READERS, ids=[r[0] for r in READERS])
@given(data=st.binary(max_size=200))
@FUZZ
def test_corrupt_bytes(capsys, tmp_path, reader, data):
    assert _check_reader(capsys, tmp_path, reader, data) == 1


@pytest.mark.parametrize("reader", READERS, ids=[r[0] for r in READERS])
@given(cut=st.floats(0, 1, exclude_max=True))
@FUZZ
def test_truncated(capsys, tmp_path, reader, cut):
    text = json.dumps(_valid(reader), indent=1).encode()
    assert _check_reader(capsys, tmp_path, reader, text[: int(cut * len(text.rstrip()))]) == 1


@pytest.mark.parametrize("reader", READERS, ids=[r[0] for r in READERS])
@given(seed=st.integers(0, 2**32), value=JSON_VALUES)
@FUZZ
def test_wrong_types(capsys, tmp_path, reader, seed, value):
    """A value anywhere replaced by anything: the command works (the value fit) or refuses in one line."""
    doc = _mutate(_valid(reader), random.Random(seed), value)
    _check_reader(capsys, tmp_path, reader, json.dumps(doc).encode())


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_binary_spec_file(capsys, tmp_path, suffix):
    pytest.importorskip("yaml")
    code = _check_reader(capsys, tmp_path, READERS[4], b"\x00\xff\xfe garbage \x89PNG", suffix)
    assert code == 1


def test_future_table_version(capsys, tmp_path):
    doc = json.loads(MACS_TABLE.read_text())
    doc["version"] = 99
    code, _, err = run(capsys, "table", "show", _write(tmp_path / "t.json", doc))
    assert_refused(code, err, codes=(1,))
    assert "version 99" in err and "upgrade hwnas" in err


def _write(path, doc):
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("kind", ["missing", "folder", "binary", "truncated", "not a state_dict", "wrong shapes"])
def test_weights_that_are_not_a_checkpoint(capsys, tmp_path, kind):
    import torch

    ckpt = tmp_path / "w.pt"
    if kind == "folder":
        ckpt = tmp_path
    elif kind == "binary":
        ckpt.write_bytes(bytes(range(256)) * 4)
    elif kind == "truncated":
        torch.save({"stem.0.weight": torch.zeros(16, 3, 3, 3)}, ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[:300])
    elif kind == "not a state_dict":
        torch.save([1, 2, 3], ckpt)
    elif kind == "wrong shapes":
        from hwnas.model.network import build_network
        from hwnas.spaces import builtin

        state = build_network(builtin().networks["nsenet_gpu"], 0).state_dict()
        state = {k: torch.zeros(3) if v.dim() == 4 else v for k, v in state.items()}
        torch.save(state, ckpt)
    out = tmp_path / "out" / "m.onnx"
    code, _, err = run(capsys, "export", "onnx", "nsenet_gpu", "-o", out, "--weights", ckpt)
    assert_refused(code, err, codes=(1,))
    assert not out.exists()


@pytest.mark.parametrize("content", [b"", b"\x08\x07garbage protobuf\xff", b"not an onnx file at all"])
def test_bench_a_file_that_is_not_onnx(capsys, tmp_path, content):
    model = tmp_path / "m.onnx"
    model.write_bytes(content)
    code, _, err = run(capsys, "bench", model, "--duration-s", "0", "--warmup-ms", "0", "--iterations", "1")
    assert_refused(code, err, codes=(1,))
    assert "not an ONNX model" in err


def test_bench_missing_file(capsys, tmp_path):
    for target in (tmp_path / "none.onnx", tmp_path / "none.plan"):
        code, _, err = run(capsys, "bench", target, "--backend", "tensorrt" if target.suffix == ".plan" else "ort")
        assert_refused(code, err, codes=(1,))


# ---------------------------------------------------------------------------------------------
# Output paths: a folder, under a file, /proc, a missing folder (made), a full disk.


def _output_commands(tmp_path):
    """Commands that write, each with a callable making its argv for an output path, and the time it takes."""
    return {
        "table build": lambda out: ["table", "build", "--space", "latency19", "--macro", "latency", "--backend",
                                    "none", "--quiet", "-o", out],
        "export onnx": lambda out: ["export", "onnx", "nsenet_gpu", "--batch", "1", "-o", out],
        "validate -o": lambda out: ["validate", "--table", LATENCY_TABLE, "--samples", "1", "--quiet", "-o", out],
        "validate --plot": lambda out: ["validate", "--table", LATENCY_TABLE, "--samples", "1", "--quiet", "--plot",
                                        out],
    }


@pytest.mark.parametrize("command", ["table build", "export onnx", "validate -o", "validate --plot"])
@pytest.mark.parametrize("kind", ["folder", "under a file", "proc", "empty name"])
def test_unwritable_output(capsys, tmp_path, command, kind):
    (tmp_path / "file").write_text("x")
    out = {"folder": tmp_path, "under a file": tmp_path / "file" / "out.png", "proc": "/proc/hwnas/out.png",
           "empty name": ""}[kind]
    if command == "validate --plot":
        pytest.importorskip("matplotlib")
    start = time.perf_counter()
    code, _, err = run(capsys, *_output_commands(tmp_path)[command](out))
    assert_refused(code, err, codes=(1,))
    assert time.perf_counter() - start < 30  # refused before the work, not after
    assert leftovers(tmp_path) == ["file"] and (tmp_path / "file").read_text() == "x"


def test_missing_output_folder_is_made(capsys, tmp_path):
    out = tmp_path / "new" / "deeper" / "t.json"
    code, _, err = run(capsys, "table", "build", "--space", "latency19", "--macro", "latency", "--backend", "none",
                       "--quiet", "-o", out)
    assert code == 0, err
    assert json.loads(out.read_text())["meta"]["complete"] is True
    assert leftovers(out.parent) == ["t.json"]  # no temporary file, no lock left


@pytest.mark.parametrize("command", ["table build", "export onnx"])
def test_full_disk(capsys, tmp_path, monkeypatch, command):
    """ENOSPC while the output is written: exit 1, the line says to free space, nothing is left."""
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    out = tmp_path / ("t.json" if command == "table build" else "m.onnx")
    code, _, err = run(capsys, *_output_commands(tmp_path)[command](out))
    assert_refused(code, err, codes=(1,))
    assert "no space left" in err and "free some space" in err
    assert leftovers(tmp_path) == []


def test_plot_format_refused_before_measuring(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    code, _, err = run(capsys, "validate", "--table", LATENCY_TABLE, "--samples", "1", "--plot", tmp_path / "p.docx")
    assert_refused(code, err, codes=(1,))
    assert "cannot write .docx" in err and leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Locks and kills: subprocesses (a real second process, real signals).


def _default_sigint() -> None:
    """Ctrl-C as in a terminal: a test runner started in the background ignores SIGINT, its
    children inherit that, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _hwnas(*argv, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "hwnas.cli.main", *map(str, argv)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint,
                            **kwargs)


def _wait_for(predicate, timeout=120.0):
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


SLOW_BUILD = ["table", "build", "--space", "latency19", "--macro", "latency", "--backend", "ort", "--rounds", "1",
              "--quiet"]


@pytest.mark.slow
def test_two_builds_into_one_table(capsys, tmp_path):
    out = tmp_path / "t.json"
    first = _hwnas(*SLOW_BUILD, "-o", out)
    try:
        _wait_for(lambda: Path(f"{out}.lock").exists() or first.poll() is not None)
        assert first.poll() is None, first.communicate()
        code, _, err = run(capsys, *SLOW_BUILD, "-o", out, "--resume")
        assert_refused(code, err, codes=(1,))
        assert f"pid {first.pid}" in err and "table build" in err
    finally:
        first.send_signal(signal.SIGINT)
        _, first_err = first.communicate(timeout=120)
    # Ctrl-C: exit 130, one line saying what was kept and how to continue
    assert first.returncode == 130 and first_err.count("\n") == 1 and "interrupted" in first_err, first_err
    assert "--resume" in first_err and "Traceback" not in first_err
    assert not Path(f"{out}.lock").exists()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["table build", "export onnx"])
def test_kill_during_write_leaves_whole_or_nothing(capsys, tmp_path, command):
    """SIGKILL at a random moment: the output is absent or whole (it loads), never a truncated
    file; the killed build's stale lock does not block the next one."""
    import onnx

    from hwnas.profiling.table import Table

    out = tmp_path / ("t.json" if command == "table build" else "m.onnx")
    argv = _output_commands(tmp_path)[command](out)
    rng = random.Random(0)
    for _ in range(3):
        proc = _hwnas(*argv)
        time.sleep(rng.uniform(0.5, 6.0))
        proc.kill()
        proc.communicate()
        if out.exists():
            if command == "table build":
                Table.load(out)
                code, _, err = run(capsys, *argv, "--resume")
                assert code == 0, err
                assert Table.load(out).meta["complete"]
            else:
                onnx.checker.check_model(onnx.load(str(out)))
        out.unlink(missing_ok=True)


@pytest.mark.parametrize("table, words", [(MACS_TABLE, "prices MACs and params only"), ("missing.json", "no such file")])
def test_bench_table_refused_before_timing(capsys, table, words):
    start = time.perf_counter()
    code, _, err = run(capsys, "bench", "nsenet_gpu", "--table", table, "--duration-s", "600")
    assert_refused(code, err, codes=(1,))
    assert words in err and time.perf_counter() - start < 60


@given(target=st.sampled_from(["1e-300", "1e-9", "0.5", "300", "1e9"]),
       alpha=st.sampled_from(["0", "1e-5", "1", "1e6"]), beta=st.sampled_from(["0.01", "1", "2", "16"]),
       form=st.sampled_from(["nse", "nss", "linear", "fbnet"]), lr=st.sampled_from(["1e-6", "0.2", "100"]),
       metric=st.sampled_from(["latency", "macs"]))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_search_dry_run_any_allowed_numbers_end_in_an_answer(capsys, target, alpha, beta, form, lr, metric):
    """Extreme but allowed numbers: a result or a one-line refusal (an overflowed penalty), never a
    hang or a traceback."""
    def too_long(*_):
        raise AssertionError("search --dry-run did not finish")

    old = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(120)
    try:
        code, out, err = run(capsys, "search", "--dry-run", "--table", LATENCY_TABLE, "--metric", metric,
                             "--target", target, "--alpha", alpha, "--beta", beta, "--form", form, "--lr", lr,
                             "--steps", "4", "--json")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    if code == 0:
        result = json.loads(out)
        assert all(math.isfinite(t["expected"]) for t in result["trajectory"])
    else:
        assert_refused(code, err, codes=(1,))


@given(seed=st.integers(0, 2**32), value=JSON_VALUES | st.sampled_from(["nan", "inf", "-1", "4e-5", "0"]))
@settings(max_examples=60, deadline=None)
def test_search_config_fuzz(seed, value):
    """A search config file with any setting replaced by anything: a config or a one-line SpecError."""
    from hwnas.errors import HwnasError
    from hwnas.search import SearchConfig

    settings_ = SearchConfig(target=8.0).to_dict()
    name = random.Random(seed).choice(sorted(settings_))
    settings_[name] = value
    try:
        cfg = SearchConfig.from_dict(settings_, "c.yaml").check("c.yaml")
    except HwnasError as exc:
        assert "\n" not in str(exc) and "c.yaml" in str(exc)
    else:
        for field_name, got in cfg.to_dict().items():
            assert not isinstance(got, float) or math.isfinite(got), field_name
