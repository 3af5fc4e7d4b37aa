"""The search's inputs as a new user gives them, wrong in every way they can be: its data (an .npz,
an image folder, any torch Dataset), its settings, its run folder. Each problem is a one-line
refusal that writes nothing (no run folder, no lock), or, found as batches are read, a one-line
error that removes the run folder unless it holds a checkpoint. What is refused and what is
adapted is decided in hwnas.search.checks.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
import typing
import zipfile
from dataclasses import fields

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwnas.errors import HwnasError
from hwnas.search import Search, SearchConfig, TensorImages, load_npz, search
from hwnas.search.checks import DataError

from conftest import REPO
from test_cli_inputs import assert_refused, leftovers, run
from tiny_search import make_tiny, tiny_config, one_thread  # noqa: F401 - autouse: one torch thread


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("inputs"))


def tiny_arrays(tiny):
    with np.load(tiny["npz"]) as f:
        return f["images"].copy(), f["labels"].copy()


def search_cli(capsys, tiny, data, out, *extra):
    """`hwnas search run` on the tiny problem, sized to end in seconds were the input taken."""
    quick = tiny["folder"] / "quick.json"
    if not quick.exists():
        quick.write_text(json.dumps(tiny_config(tiny).to_dict()))
    return run(capsys, "search", "run", "--table", tiny["path"], "--data", data, "--target-ms", tiny["target"],
               "--config", quick, "--rounds", "1", "--K", "2", "--epochs", "1", "-o", out, "--quiet", *extra)


def assert_nothing_written(folder, names=("data.npz", "data")):
    """Only the test's own inputs in `folder`: no run folder, no lock, no temporary file."""
    assert [n for n in leftovers(folder) if n not in names] == []


# ---------------------------------------------------------------------------------------------
# .npz files: each way one can be wrong is refused in one line naming the file, before any work.

def _npz(images, labels, **more):
    buf = io.BytesIO()
    np.savez(buf, images=images, labels=labels, **more)
    return buf.getvalue()


def _bad_npz(tiny, kind):
    x, y = tiny_arrays(tiny)
    f = x.astype(np.float32) / 255
    if kind == "NaN":
        f[37, 1, 3, 4] = np.nan
        return _npz(f, y)
    if kind == "infinity":
        f[5, 0, 0, 0] = -np.inf
        return _npz(f, y)
    if kind == "no images":
        return _npz(x[:0], y[:0])
    if kind == "truncated zip":
        return _npz(x, y)[:3000]
    if kind == "not a zip":
        return bytes(range(256)) * 8
    if kind == "empty file":
        return b""
    if kind == "a .npy":
        buf = io.BytesIO()
        np.save(buf, x)
        return buf.getvalue()
    if kind == "corrupt member":
        data = bytearray(_npz(x, y))
        data[400:420] = b"\xff" * 20  # inside the images' bytes: the zip's CRC no longer matches
        return bytes(data)
    if kind == "pickled objects":
        return _npz(np.array([object()] * 4, dtype=object), y[:4])
    if kind == "no labels":
        buf = io.BytesIO()
        np.savez(buf, images=x)
        return buf.getvalue()
    if kind == "labels of another length":
        return _npz(x, y[:-3])
    if kind == "labels (N, 1)":
        return _npz(x, y[:, None])
    if kind == "negative labels":
        y = y.copy()
        y[10] = -1
        return _npz(x, y)
    if kind == "float labels":
        return _npz(x, y.astype(np.float32))
    if kind == "boolean labels":
        return _npz(x, y > 1)
    if kind == "a class the head cannot hold":
        y = y.copy()
        y[3] = 4  # the tiny head has 4 classes: 0..3
        return _npz(x, y)
    if kind == "fewer classes than the head":
        return _npz(x, y % 3)
    if kind == "channels-last":
        return _npz(x.transpose(0, 2, 3, 1), y)
    if kind == "two channels":
        return _npz(x[:, :2], y)
    if kind == "another resolution":
        return _npz(x[:, :, :12, :12], y)
    if kind == "not square":
        return _npz(x[:, :, :, :12], y)
    if kind == "int16 images":
        return _npz(x.astype(np.int16), y)
    if kind == "3-D images":
        return _npz(x[:, 0], y)
    raise AssertionError(kind)


NPZ_CASES = {  # what the one line must say, besides the file's name
    "NaN": "image 37 has non-finite values",
    "infinity": "image 5 has non-finite values",
    "no images": "no images",
    "truncated zip": "cannot read",
    "not a zip": "not an .npz (it is not a zip file)",
    "empty file": "not an .npz (it is empty)",
    "a .npy": "not an .npz (it is a single .npy array)",
    "corrupt member": "cannot read",
    "pickled objects": "cannot read",
    "no labels": "no array labels",
    "labels of another length": "labels must have shape (192,)",
    "labels (N, 1)": "labels must have shape (192,)",
    "negative labels": "found -1",
    "float labels": "labels must be integers",
    "boolean labels": "labels must be integers",
    "a class the head cannot hold": "5 classes",
    "fewer classes than the head": "3 classes",
    "channels-last": "channels-last",
    "two channels": "1 or 3 channels",
    "another resolution": "resize the images",
    "not square": "must be square",
    "int16 images": "float or uint8",
    "3-D images": "(N, C, H, W)",
}


@pytest.mark.parametrize("kind", NPZ_CASES)
def test_bad_npz_is_refused_in_one_line_and_writes_nothing(capsys, tiny, tmp_path, kind):
    data = tmp_path / "data.npz"
    data.write_bytes(_bad_npz(tiny, kind))
    code, out, err = search_cli(capsys, tiny, data, tmp_path / "run")
    assert_refused(code, err, codes=(1,))
    assert str(data) in err and NPZ_CASES[kind] in err, err
    assert "internal error" not in err and out == ""
    assert_nothing_written(tmp_path)


@given(cut=st.integers(0, 10_000), flips=st.lists(st.integers(0, 10_000), max_size=4))
@settings(max_examples=40, deadline=None)
def test_npz_cut_or_flipped_anywhere_is_read_or_refused(tmp_path_factory, cut, flips):
    """Any prefix of a valid .npz, with any bytes flipped: loaded whole, or one DataError line."""
    rng = np.random.default_rng(0)
    data = bytearray(_npz(rng.integers(0, 256, (8, 3, 4, 4), dtype=np.uint8), np.arange(8) % 2))
    data = data[:cut] if cut < len(data) else data
    for f in flips:
        if f < len(data):
            data[f] ^= 0xFF
    path = tmp_path_factory.mktemp("npz") / "d.npz"
    path.write_bytes(bytes(data))
    try:
        ds = load_npz(path)
    except HwnasError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc), exc
    else:
        assert len(ds) == 8 and torch.isfinite(ds.images).all()


# ---------------------------------------------------------------------------------------------
# Image folders

def _png(array):
    image = pytest.importorskip("PIL.Image")
    buf = io.BytesIO()
    image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _folder(root, tiny, kind):
    x, y = tiny_arrays(tiny)
    files = {}
    for i, (a, c) in enumerate(zip(x[:40], y[:40])):
        files[f"c{c}/{i:03d}.png"] = _png(a.transpose(1, 2, 0))
    bad = "c1/" + next(name[3:] for name in files if name.startswith("c1/"))
    if kind == "text named .png":
        files[bad] = b"these are not pixels\n"
    elif kind == "truncated png":
        files[bad] = files[bad][: len(files[bad]) // 2]
    elif kind == "another size":
        files[bad] = _png(np.zeros((12, 12, 3), np.uint8))
    elif kind == "a class folder without images":
        (root / "c9").mkdir(parents=True)
        (root / "c9" / "notes.txt").write_text("no images here")
    elif kind == "no images":
        files = {name.replace(".png", ".txt"): data for name, data in files.items()}
    elif kind == "no class folders":
        files = {name.split("/")[1]: data for name, data in files.items()}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root / bad


FOLDER_CASES = {
    "text named .png": "is not an image Pillow can read",
    "truncated png": "cannot read image",
    "another size": "must be of one size",
    "a class folder without images": "a class folder without images",
    "no images": "no images",
    "no class folders": "no class folders",
}


@pytest.mark.parametrize("kind", FOLDER_CASES)
def test_bad_image_folder_is_refused_naming_the_file(capsys, tiny, tmp_path, kind):
    root = tmp_path / "data"
    root.mkdir()
    bad = _folder(root, tiny, kind)
    code, _, err = search_cli(capsys, tiny, root, tmp_path / "run")
    assert_refused(code, err, codes=(1,))
    assert FOLDER_CASES[kind] in err, err
    if kind in ("text named .png", "truncated png", "another size"):
        assert str(bad) in err
    assert_nothing_written(tmp_path)


def test_image_folder_is_read_as_its_npz(tiny, tmp_path):
    """The folder's images, read file by file into one array, are the .npz's (the control of the
    refusals above: the same folder, unbroken, loads)."""
    from hwnas.search.data import load_image_folder

    root = tmp_path / "data"
    root.mkdir()
    _folder(root, tiny, "good")
    ds = load_image_folder(root)
    x, y = tiny_arrays(tiny)
    order = np.argsort(y[:40], kind="stable")  # class folders in order, files by name within each
    ref = TensorImages(torch.from_numpy(x[:40][order]), torch.from_numpy(y[:40][order]))
    torch.testing.assert_close(ds.images, ref.images)
    assert ds.labels.tolist() == ref.labels.tolist() and ds.files[0].endswith("c0/" + ds.files[0].split("/")[-1])


# ---------------------------------------------------------------------------------------------
# Any Dataset: a sample checked before the run, every item as its batch is read.

class Items(torch.utils.data.Dataset):
    """A Dataset of the tiny images as a user might write one: no `labels` attribute, so its labels
    are known only as items are read; `spoil(i, item) -> item` breaks the items it chooses."""

    def __init__(self, tiny, spoil=None, samples=False):
        ds = load_npz(tiny["npz"])
        self.images, self.targets_, self.spoil = ds.images, ds.labels, spoil
        if samples:  # torchvision's ImageFolder lists its files
            self.samples = [(f"/data/img{i:04d}.png", int(c)) for i, c in enumerate(self.targets_)]

    def __len__(self):
        return len(self.targets_)

    def __getitem__(self, i):
        item = (self.images[i].clone(), int(self.targets_[i]))
        return self.spoil(i, item) if self.spoil else item


def _sampled(n=192):
    from hwnas.search.checks import SAMPLE

    return {round(k * (n - 1) / (SAMPLE - 1)) for k in range(SAMPLE)}


SPOILERS = {  # item -> what is wrong with it, for every item the sample does not read
    "NaN": (lambda x, y: (x.fill_(float("nan")), y), "non-finite values"),
    "a float label": (lambda x, y: (x, float(y)), "the label must be an integer"),
    "a label the head cannot hold": (lambda x, y: (x, y + 4), "is not a class of the head (0..3)"),
    "another size": (lambda x, y: (x[:, :8, :8], y), "image of shape (3, 8, 8)"),
    "not a tensor": (lambda x, y: (x.numpy(), y), "must be a tensor"),
    "uint8": (lambda x, y: ((x * 255).clamp(0, 255).to(torch.uint8), y), "must be a float tensor"),
    "an exception": (lambda x, y: 1 / 0, "reading it failed: ZeroDivisionError"),
}


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("kind", SPOILERS)
def test_a_datasets_bad_item_stops_the_run_at_its_batch_naming_it(tiny, tmp_path, kind, workers):
    """The sample before the run passes; the first batch holding a bad item stops the run in one
    line naming the item (its file, where the Dataset lists them), from a DataLoader worker too;
    the run had no checkpoint, so its folder is removed."""
    spoil, words = SPOILERS[kind]
    sampled = _sampled()
    data = Items(tiny, lambda i, item: item if i in sampled else spoil(*item), samples=(kind == "NaN"))
    out = tmp_path / "run"
    with pytest.raises(HwnasError) as caught:
        search(tiny["table"], data, tiny_config(tiny, workers=workers, checkpoint_every=1000), out, progress=False)
    message = str(caught.value)
    assert "\n" not in message and words in message and "Traceback" not in message, message
    assert ("/data/img" in message) if kind == "NaN" else ("of the Items" in message), message
    assert leftovers(tmp_path) == []
    # the loader's workers ended with the run (left to a later garbage collection, each waits 5 s)
    assert multiprocessing.active_children() == []


def test_the_sample_is_checked_before_the_run_folder_is_made(tiny, tmp_path):
    data = Items(tiny, lambda i, item: (item[0], 7) if i == 0 else item)
    with pytest.raises(DataError, match="item 0 of the Items: label 7 is not a class of the head"):
        Search(tiny["table"], data, tiny_config(tiny), tmp_path / "run")
    assert leftovers(tmp_path) == []


def test_a_run_that_fails_after_a_checkpoint_keeps_its_folder(tiny, tmp_path):
    """The control of the removal above: a bad item read after the first checkpoint leaves the
    run folder with its checkpoint, to --resume once the data is fixed."""
    reads = {"n": 0}

    def late(i, item):
        reads["n"] += 1
        return item if reads["n"] < 150 else (item[0].fill_(float("nan")), item[1])

    with pytest.raises(DataError, match="non-finite"):
        search(tiny["table"], Items(tiny, late), tiny_config(tiny, checkpoint_every=1), tmp_path / "run",
               progress=False)
    assert (tmp_path / "run" / "checkpoint.pt").exists() and (tmp_path / "run" / "config.json").exists()
    assert not (tmp_path / "run.lock").exists()


def test_a_killed_runs_folder_is_started_afresh(tiny, tmp_path):
    """A folder a killed run left before its first checkpoint (config.json, a log) holds no run:
    a new run starts there, with a log of its own."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "log.jsonl").write_text('{"event": "from the killed run"}\n')
    (out / "notes.txt").write_text("the user's")
    search_obj = Search(tiny["table"], load_npz(tiny["npz"]), tiny_config(tiny, checkpoint_every=1000), out,
                        progress=False)
    search_obj.stop_after = 2
    with pytest.raises(KeyboardInterrupt):
        search_obj.run()
    # stopped before a checkpoint: what the run made is removed (round_01/), what was there is not
    assert sorted(os.listdir(out)) == ["config.json", "log.jsonl", "notes.txt"]
    assert "killed run" not in (out / "log.jsonl").read_text() and (out / "notes.txt").read_text() == "the user's"
    assert json.loads((out / "config.json").read_text())["config"]["checkpoint_every"] == 1000


# ---------------------------------------------------------------------------------------------
# Sizes and folders refused before the folder is made

def test_data_smaller_than_a_batch_is_refused_before_the_folder(capsys, tiny, tmp_path):
    x, y = tiny_arrays(tiny)
    data = tmp_path / "data.npz"
    data.write_bytes(_npz(x[:30], y[:30]))
    code, _, err = search_cli(capsys, tiny, data, tmp_path / "run")  # batch 32
    assert_refused(code, err, codes=(1,))
    assert "larger than the training data (27 images" in err
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("kind", ["a file", "under a file"])
def test_run_folder_that_cannot_be_one(capsys, tiny, tmp_path, kind):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if kind == "a file" else tmp_path / "f" / "run"
    code, _, err = search_cli(capsys, tiny, tiny["npz"], out)
    assert_refused(code, err, codes=(1,))
    assert "is a file" in err and leftovers(tmp_path) == ["f"] and (tmp_path / "f").read_text() == "x"


def test_missing_parent_folders_made_by_a_failed_run_are_removed(tiny, tmp_path):
    out = tmp_path / "a" / "b" / "run"
    s = Search(tiny["table"], load_npz(tiny["npz"]), tiny_config(tiny, checkpoint_every=1000), out, progress=False)
    s.stop_after = 1
    with pytest.raises(KeyboardInterrupt):
        s.run()
    assert leftovers(tmp_path) == []


def test_resume_into_a_missing_folder_is_refused_and_makes_none(capsys, tiny, tmp_path):
    code, _, err = search_cli(capsys, tiny, tiny["npz"], tmp_path / "a" / "b" / "run", "--resume")
    assert_refused(code, err, codes=(1,))
    assert "holds no checkpoint to resume" in err and leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["truncated", "not a checkpoint", "config.json broken", "config.json missing"])
def test_resume_from_a_broken_run_folder_is_refused_and_writes_nothing(capsys, tiny, tmp_path, kind):
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"format": "hwnas-search-checkpoint", "version": 2, "x": torch.zeros(1000)}, out / "checkpoint.pt")
    # the settings of search_cli's run: only the file under test is wrong
    cfg = tiny_config(tiny, rounds=1, k=2, epochs=1).check()
    identity = Search(tiny["table"], load_npz(tiny["npz"]), cfg, out).identity
    (out / "config.json").write_text(json.dumps({"config": cfg.to_dict(), "identity": identity}))
    if kind == "truncated":
        (out / "checkpoint.pt").write_bytes((out / "checkpoint.pt").read_bytes()[:500])
    elif kind == "not a checkpoint":
        torch.save([1, 2, 3], out / "checkpoint.pt")
    elif kind == "config.json broken":
        (out / "config.json").write_text('{"config": {"k": 2')
    else:
        (out / "config.json").unlink()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = search_cli(capsys, tiny, tiny["npz"], out, "--resume")
    assert_refused(code, err, codes=(1,))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and leftovers(tmp_path) == ["run"]


# ---------------------------------------------------------------------------------------------
# One writer per run folder

def _search_process(tiny, out, *extra):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "hwnas.cli.main", "search", "run", "--table", str(tiny["path"]),
                             "--data", str(tiny["npz"]), "--target-ms", str(tiny["target"]), "--rounds", "3",
                             "--K", "2", "--epochs", "50", "--threads", "1", "-o", str(out), "--quiet", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout=300.0):
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.mark.slow
def test_a_second_process_is_refused_and_a_killed_ones_lock_does_not_block(capsys, tiny, tmp_path):
    out = tmp_path / "run"
    first = _search_process(tiny, out)
    try:
        _wait_for(lambda: (tmp_path / "run.lock").exists() or first.poll() is not None)
        assert first.poll() is None, first.communicate()
        for extra in (["--resume"], []):  # continuing its run, or starting another one there
            code, _, err = search_cli(capsys, tiny, tiny["npz"], out, *extra)
            assert_refused(code, err, codes=(1,))
            assert f"pid {first.pid}" in err and "search run" in err, err
    finally:
        first.send_signal(signal.SIGKILL)  # its lock file stays behind, unlocked
        first.communicate()
    assert (tmp_path / "run.lock").exists()
    s = Search(tiny["table"], load_npz(tiny["npz"]), tiny_config(tiny, checkpoint_every=1000), out, progress=False)
    s.stop_after = 1
    with pytest.raises(KeyboardInterrupt):  # it ran: the killed process's lock did not block it
        s.run()
    assert not (tmp_path / "run.lock").exists()


# ---------------------------------------------------------------------------------------------
# Fuzz: every setting with wrong types and values out of its range; each input file cut, flipped
# or mutated. A setting or file is taken, or refused in one line that names it; nothing is written.

WRONG = [None, "x", "", [], {}, [1], {"a": 1}, True, False, float("nan"), float("inf"), float("-inf"), -1, 0, 0.5,
         1e12, -1e-300, 2**64, "1e400", "nan"]


@pytest.mark.parametrize("name", [f.name for f in fields(SearchConfig)])
def test_every_setting_with_every_wrong_value(name):
    """Each setting of SearchConfig given each kind of wrong value: refused with a one-line error
    naming the setting and the file, or taken as a valid value of its type."""
    for value in WRONG:
        raw = {**SearchConfig(target=8.0).to_dict(), name: value}
        try:
            cfg = SearchConfig.from_dict(raw, "c.yaml").check("c.yaml")
        except HwnasError as exc:
            assert "\n" not in str(exc) and "c.yaml" in str(exc) and name in str(exc), (value, exc)
            continue
        got = getattr(cfg, name)
        assert _of_declared_type(got, HINTS[name]), (name, value, got)
        assert not isinstance(got, float) or math.isfinite(got), (name, value, got)


HINTS = typing.get_type_hints(SearchConfig)


def _of_declared_type(value, hint):
    """`value` is of the setting's declared type (`float | None`...): a bool is no int, an int no float."""
    allowed = typing.get_args(hint) or (hint,)
    return any(value is None if t is type(None) else type(value) is t for t in allowed)


def test_settings_files_with_keys_that_are_not_names(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("1: 2\nnull: 3\nk: 2\n")  # YAML keys that are not strings
    from hwnas.search import read_config

    with pytest.raises(HwnasError, match=r"c.yaml: unknown setting\(s\) 1, None"):
        SearchConfig.from_dict(read_config(path), str(path))


@pytest.mark.parametrize("name", [f.name for f in fields(SearchConfig) if f.name not in ("metric", "target")])
def test_a_wrong_setting_in_a_config_file_is_refused_before_anything_is_written(capsys, tiny, tmp_path, name):
    pytest.importorskip("yaml")
    config = tmp_path / "c.yaml"
    broken = tmp_path / "data.npz"  # refused next, quickly, were the setting taken
    broken.write_bytes(b"not an npz")
    for text in ("x", "[]", ".nan", "{a: 1}"):
        config.write_text(f"{name}: {text}\n")
        code, _, err = run(capsys, "search", "run", "--table", tiny["path"], "--data", broken, "--target-ms",
                           tiny["target"], "--config", config, "-o", tmp_path / "run", "--quiet")
        assert_refused(code, err, codes=(1,))
        assert str(config) in err and name in err, err
        assert_nothing_written(tmp_path, names=("c.yaml", "data.npz"))


def _settings_file(tiny, folder):
    path = folder / "settings.json"
    path.write_text(json.dumps(tiny_config(tiny, checkpoint_every=1).to_dict()))
    return path


@given(data=st.data())
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_settings_file_cut_or_corrupted(capsys, tiny, tmp_path_factory, data):
    """A settings file cut anywhere, or bytes of it replaced: refused in one line naming it, or (a
    cut that still parses) taken; the broken data given with it then refuses the run. Nothing is
    written either way."""
    folder = tmp_path_factory.mktemp("settings")
    config = _settings_file(tiny, folder)
    text = bytearray(config.read_bytes())
    if data.draw(st.booleans()):
        text = text[:data.draw(st.integers(0, len(text)))]
    else:
        for _ in range(data.draw(st.integers(1, 4))):
            text[data.draw(st.integers(0, len(text) - 1))] = data.draw(st.integers(0, 255))
    config.write_bytes(bytes(text))
    broken = folder / "data.npz"
    broken.write_bytes(b"not an npz")
    code, _, err = search_cli(capsys, tiny, broken, folder / "run", "--config", config)
    assert_refused(code, err, codes=(1,))
    assert str(config) in err or str(broken) in err, err
    assert_nothing_written(folder, names=("settings.json", "data.npz"))


@given(seed=st.integers(0, 2**32), value=st.sampled_from([None, "x", -1, 0, 1e300, [], {}, True, "nan", [[1]]]))
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_table_mutated_anywhere(tiny, tmp_path_factory, seed, value):
    """The search's table with any value replaced by anything: the search is set up (nothing runs,
    nothing is written) or refused in one line."""
    from hwnas.profiling.table import Table
    from test_cli_inputs import _mutate

    folder = tmp_path_factory.mktemp("table")
    path = folder / "t.json"
    path.write_text(json.dumps(_mutate(json.loads(tiny["path"].read_text()), random.Random(seed), value)))
    try:
        Search(Table.load(path), load_npz(tiny["npz"]), tiny_config(tiny), folder / "run")
    except HwnasError as exc:
        assert "\n" not in str(exc)
    assert leftovers(folder) == ["t.json"]


@pytest.mark.parametrize("cut", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_table_cut_is_refused_by_search_run(capsys, tiny, tmp_path, cut):
    text = tiny["path"].read_bytes()
    table = tmp_path / "t.json"
    table.write_bytes(text[:int(cut * len(text))])
    code, _, err = run(capsys, "search", "run", "--table", table, "--data", tiny["npz"], "--target-ms", "1",
                       "-o", tmp_path / "run", "--quiet")
    assert_refused(code, err, codes=(1,))
    assert leftovers(tmp_path) == ["t.json"]


@given(data=st.data())
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_image_files_cut_or_corrupted(tiny, tmp_path_factory, data):
    """An image folder whose files are cut or have bytes replaced: read whole, or refused in one
    line naming the file."""
    from hwnas.search.data import load_image_folder

    root = tmp_path_factory.mktemp("images")
    _folder(root, tiny, "good")
    files = sorted(root.rglob("*.png"))
    victim = files[data.draw(st.integers(0, len(files) - 1))]
    raw = bytearray(victim.read_bytes())
    if data.draw(st.booleans()):
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    victim.write_bytes(bytes(raw))
    try:
        ds = load_image_folder(root)
    except HwnasError as exc:
        assert "\n" not in str(exc) and str(victim) in str(exc), exc
    else:
        assert len(ds) == 40 and torch.isfinite(ds.images).all()


@pytest.fixture(scope="module")
def stopped_run(tiny, tmp_path_factory):
    """A run stopped after its third step (checkpoints every step), and its settings file."""
    folder = tmp_path_factory.mktemp("stopped")
    config = _settings_file(tiny, folder)
    s = Search(tiny["table"], load_npz(tiny["npz"]), SearchConfig.from_dict(json.loads(config.read_text()), "c").check(),
               folder / "run", progress=False)
    s.stop_after = 3
    with pytest.raises(KeyboardInterrupt):
        s.run()
    assert (folder / "run" / "checkpoint.pt").exists()
    return folder


@pytest.mark.parametrize("victim, cut", [("checkpoint.pt", 0.0), ("checkpoint.pt", 0.3), ("checkpoint.pt", 0.97),
                                         ("config.json", 0.5), ("config.json", 0.0)])
def test_resume_from_a_cut_file_is_refused_and_changes_nothing(capsys, tiny, stopped_run, tmp_path, victim, cut):
    import shutil

    out = shutil.copytree(stopped_run / "run", tmp_path / "run")
    data = (out / victim).read_bytes()
    (out / victim).write_bytes(data[:int(cut * len(data))])
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _, err = run(capsys, "search", "run", "--table", tiny["path"], "--data", tiny["npz"], "--target-ms",
                       tiny["target"], "--config", stopped_run / "settings.json", "-o", out, "--resume", "--quiet")
    assert_refused(code, err, codes=(1,))
    assert str(out / victim) in err, err
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert leftovers(tmp_path) == ["run"]


def test_resume_from_the_stopped_run_works(capsys, tiny, stopped_run, tmp_path):
    """The control of the refusals above: the same folder, uncut, resumes (settings from its file)."""
    import shutil

    out = shutil.copytree(stopped_run / "run", tmp_path / "run")
    s = Search(tiny["table"], load_npz(tiny["npz"]),
               SearchConfig.from_dict(json.loads((stopped_run / "settings.json").read_text()), "c").check(), out,
               progress=False)
    s.stop_after = 1
    with pytest.raises(KeyboardInterrupt):
        s.run(resume=True)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "resumed" for r in log)
