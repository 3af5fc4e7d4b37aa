"""Data-parallel search on CPU processes with gloo: batch norms over the global batch (eager and
fused), a 2-process search against a 1-process one on the same global batch, a killed rank
and its resume, all launched by torchrun or torch.multiprocessing as users would launch them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hwnas.errors import HwnasError
from hwnas.search.data import ShardedBatches
from hwnas.spaces import builtin
from hwnas.spaces.macro import Position
from hwnas.supernet import SupernetCell
from hwnas.supernet.fused import FusedSupernetCell
from hwnas.supernet.global_bn import set_world

from conftest import REPO
from tiny_search import make_tiny, tiny_config

SPACE = builtin().spaces["latency19"]
RUNNER = REPO / "tests" / "data_parallel_search.py"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


# -- the data ------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, batch, world", [(100, 12, 1), (100, 12, 3), (97, 8, 4), (64, 16, 2)])
def test_ranks_batches_together_are_one_processs_batches(n, batch, world):
    one = ShardedBatches(n, batch, seed=7)
    ranks = [ShardedBatches(n, batch, 7, rank, world) for rank in range(world)]
    assert all(len(r) == len(one) == n // batch for r in ranks)
    for epoch in (0, 3):
        split = zip(*(r.epoch(epoch, start=1) for r in ranks))
        for whole, parts in zip(one.epoch(epoch, start=1), split, strict=True):
            assert all(len(p) == batch // world for p in parts)
            assert sorted(whole) == sorted(i for p in parts for i in p)
    assert list(one.epoch(0)) != list(one.epoch(1))  # reshuffled every epoch


def test_a_batch_that_does_not_split_over_the_ranks_is_refused():
    with pytest.raises(HwnasError, match="batch \\(33\\) does not split evenly over 2 processes"):
        ShardedBatches(100, 33, 0, rank=1, world=2)


# -- batch norm over the global batch ------------------------------------------------------------

def cell_problem(fused: bool, pos: Position) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A cell of fusable depthwise and unfused branches, a batch and per-item loss weights, all in
    float64 and the same in every process."""
    torch.manual_seed(0)
    cell = SupernetCell(SPACE, [0, 1, 4, 8, 13], pos).double()
    x = torch.randn(8, pos.cin, pos.resolution, pos.resolution, dtype=torch.float64)
    net = FusedSupernetCell(cell, inplace=False) if fused else cell
    out = torch.ones(len(cell.branches), dtype=torch.bool)
    w = torch.randn_like(net(x, out))
    torch.manual_seed(0)  # the same cell again, untouched by that forward
    cell = SupernetCell(SPACE, [0, 1, 4, 8, 13], pos).double()
    return (FusedSupernetCell(cell, inplace=False) if fused else cell), x, w


def one_step(net: torch.nn.Module, x: torch.Tensor, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Forward, the mean over items of a weighted sum, backward: what a training step computes."""
    x = x.clone().requires_grad_()
    cell = net.cell if isinstance(net, FusedSupernetCell) else net
    y = net(x, torch.ones(len(cell.branches), dtype=torch.bool))
    ((y * w).flatten(1).sum(1).mean()).backward()
    out = {"y": y.detach(), "x.grad": x.grad}
    out.update({f"grad {k}": p.grad for k, p in cell.named_parameters() if p.grad is not None})
    out.update({f"buffer {k}": b for k, b in cell.named_buffers()})
    return out


def group_threads() -> list[str]:
    """The threads of this process that belong to a gloo process group (by their names; Linux)."""
    tasks = Path("/proc/self/task")
    names = []
    for task in tasks.iterdir() if tasks.is_dir() else ():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:  # a thread that ended meanwhile
            pass
    return sorted(n for n in names if "gloo" in n)


def _bn_worker(rank: int, world: int, store: str, fused: bool, pos: Position, out: str) -> None:
    import hwnas.search  # noqa: F401 - before the group, as docs/search.md asks of a script that starts its own

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        net, x, w = cell_problem(fused, pos)  # the fused layer's first kernel call: after the group's start
        set_world(net, world)
        got = one_step(net, x.chunk(world)[rank], w.chunk(world)[rank])
        for k, v in got.items():
            if k.startswith("grad "):  # DDP's average of the ranks' gradients
                dist.all_reduce(v)
                v /= world
    finally:
        dist.destroy_process_group()
    # a thread of the group still running here would run on until the interpreter exits, where
    # the process can abort (SIGABRT: "terminate called without an active exception")
    torch.save({**got, "group threads": group_threads()}, f"{out}.{rank}")


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
@pytest.mark.parametrize("cell_type", ["N", "R"])
def test_two_ranks_normalise_with_the_global_batch(tmp_path, fused, cell_type):
    pos = Position(cell_type, 8, 8 if cell_type == "N" else 16, 8, 1 if cell_type == "N" else 2)
    net, x, w = cell_problem(fused, pos)
    ref = one_step(net, x, w)
    mp.spawn(_bn_worker, args=(2, str(tmp_path / "store"), fused, pos, str(tmp_path / "out")), nprocs=2)
    parts = [torch.load(tmp_path / f"out.{r}") for r in range(2)]
    assert [p.pop("group threads") for p in parts] == [[], []]  # destroy_process_group() ended them
    assert set(parts[0]) == set(ref)
    for key, value in ref.items():
        if key in ("y", "x.grad"):
            got = torch.cat([p[key] for p in parts])
            if key == "x.grad":  # each rank's loss reaches the other's inputs through the statistics:
                got = got / 2    # its gradient is of the sum of the ranks' losses, twice the mean
        else:
            got = parts[0][key]
            torch.testing.assert_close(parts[1][key], got, rtol=0, atol=0, msg=key)  # the ranks agree exactly
        # float64 throughout: only the order of summation differs
        torch.testing.assert_close(got, value, rtol=1e-10, atol=1e-12, msg=key)


def _search_group_worker(rank: int, world: int, port: int, out: str) -> None:
    """A process of a search under torchrun, as far as its process group goes: joined as the
    search joins it, the fused layer's kernels first called after that, the group closed."""
    from hwnas.search.distributed import join

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    group = join("cpu")
    try:
        net, x, w = cell_problem(True, Position("R", 8, 16, 8, 2))
        set_world(net, world)
        one_step(net, x.chunk(world)[rank], w.chunk(world)[rank])
        running = group_threads()
    finally:
        group.close()
    torch.save({"while running": running, "after close": group_threads()}, f"{out}.{rank}")


def test_a_closed_search_group_leaves_no_thread_running(tmp_path):
    """The cause of a rare SIGABRT at the exit of a data-parallel process: torch's first call of a
    custom op (the fused kernels) imported torch.distributed.nn.functional, whose default
    arguments then held the process group, so destroy_process_group() left its gloo threads
    running until the interpreter's exit. Deterministic: the threads are counted, not the aborts."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_search_group_worker, args=(2, port, str(tmp_path / "threads")), nprocs=2)
    for rank in range(2):
        seen = torch.load(tmp_path / f"threads.{rank}")
        assert seen["while running"], "no gloo thread seen while the group ran: the check sees nothing"
        assert seen["after close"] == [], seen


def _plain_bn_worker(rank: int, world: int, store: str, out: str, constant: bool = False) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3, affine=False, momentum=None).double()  # no weight; cumulative average
    set_world(bn, world)
    x = torch.randn(8, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    if constant:  # a dead ReLU's channel: zero in rank 0's share only (channel 0), in every share (channel 1)
        x[:4, 0] = 0.0
        x[:, 1] = 0.0
    w = torch.randn_like(x, generator=torch.Generator().manual_seed(2))
    grads = []
    for step in range(3):  # the running statistics over three batches
        share = (x + (0 if constant else step)).chunk(world)[rank].clone().requires_grad_()
        (bn(share) * w.chunk(world)[rank]).flatten(1).sum(1).mean().backward()
        grads.append(share.grad)
    torch.save({"x.grad": torch.stack(grads), "mean": bn.running_mean, "var": bn.running_var}, f"{out}.{rank}")
    if world > 1:
        dist.destroy_process_group()


@pytest.mark.parametrize("constant", [False, True], ids=["random", "constant_channels"])
def test_a_batch_norm_without_affine_and_with_a_cumulative_average(tmp_path, constant):
    _plain_bn_worker(0, 1, "", str(tmp_path / "one"), constant)
    mp.spawn(_plain_bn_worker, args=(2, str(tmp_path / "store"), str(tmp_path / "two"), constant), nprocs=2)
    one = torch.load(tmp_path / "one.0")
    parts = [torch.load(tmp_path / f"two.{r}") for r in range(2)]
    # each rank's gradient is of the sum of the ranks' losses, twice the mean
    torch.testing.assert_close(torch.cat([p["x.grad"] for p in parts], 1) / 2, one["x.grad"], rtol=1e-10, atol=1e-12)
    for key in ("mean", "var"):
        for part in parts:
            torch.testing.assert_close(part[key], one[key], rtol=1e-12, atol=1e-14)


# -- the search ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    tiny = make_tiny(tmp_path_factory.mktemp("dp"))
    # a held-out split of 48 images: its batches of 32 split evenly over 2 ranks; the fused layer
    # trains under DDP (its kernel given the global statistics) against the kernel's own in one process
    cfg = tiny_config(tiny, held_out=0.25, checkpoint_every=2, threshold=0.05, fused=True)
    config = tiny["folder"] / "search.json"
    config.write_text(json.dumps(cfg.to_dict()))
    return {**tiny, "cfg": cfg, "config": config}


def torchrun(nproc: int, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                             str(nproc), *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kw)


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def runner(problem, run: Path, dump: Path) -> list[str]:
    return [str(RUNNER), str(problem["path"]), str(problem["npz"]), str(problem["config"]), str(run), str(dump)]


@pytest.fixture(scope="module")
def float64_runs(problem, tmp_path_factory):
    """The same float64 search as one process and, under torchrun, as two."""
    folder = tmp_path_factory.mktemp("runs")
    one = subprocess.run([sys.executable, *runner(problem, folder / "one", folder / "dump1")], env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    code, err = finish(torchrun(2, *runner(problem, folder / "two", folder / "dump2")))
    assert code == 0, err[-3000:]
    return folder


@pytest.mark.gpu
def test_two_processes_on_one_gpu_train_as_one(problem, tmp_path):
    """The CUDA path under DDP (the fused layer's CUDA kernels given the global statistics, cuDNN's
    batch norms made global), in float32: two processes share the GPU through gloo, as NCCL
    needs a GPU per process. Round 1's training, against one process on the same global batch."""
    cfg = problem["config"]
    config = tmp_path / "search.json"
    config.write_text(json.dumps({**json.loads(cfg.read_text()), "rounds": 1}))
    args = [str(problem["path"]), str(problem["npz"]), str(config)]
    one = subprocess.run([sys.executable, str(RUNNER), *args, str(tmp_path / "one"), str(tmp_path / "dump1"),
                          "--device", "cuda:0", "--float32"], env=ENV, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    code, err = finish(torchrun(2, str(RUNNER), *args, str(tmp_path / "two"), str(tmp_path / "dump2"),
                                "--device", "cuda:0", "--float32", "--gloo"))
    assert code == 0, err[-3000:]
    single = rounds(tmp_path / "dump1" / "rank0")[0]
    for rank in range(2):
        other = rounds(tmp_path / "dump2" / f"rank{rank}")[0]
        assert other["layer_ops"] == single["layer_ops"] and other["pruned"] == single["pruned"]
        # float32 over 8 SGD steps: reassociated sums drift by a few roundings a step
        for a, b in zip(other["thetas"], single["thetas"]):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
        for key, value in single["net"].items():
            torch.testing.assert_close(other["net"][key], value, rtol=1e-3, atol=1e-4, msg=key)


def rounds(dump: Path) -> list[dict]:
    return [torch.load(p, weights_only=False) for p in sorted(dump.glob("round_*.pt"))]


def test_two_processes_search_as_one_on_the_same_global_batch(float64_runs):
    folder = float64_runs
    single = rounds(folder / "dump1" / "rank0")
    ranks = [rounds(folder / "dump2" / f"rank{r}") for r in range(2)]
    assert len(single) == 2 and all(len(r) == 2 for r in ranks)
    assert any(r["pruned"] for r in single), "the threshold must prune something for this test to mean much"
    for one, zero, first in zip(single, *ranks):
        for other in (zero, first):
            assert other["layer_ops"] == one["layer_ops"] and other["pruned"] == one["pruned"]
            # float64: the ranks' sums are reassociated, nothing else differs. Theta's Adam divides
            # each step by the gradient's own running size, so the rounding of a near-zero
            # gradient reaches the step whole: thetas agree to 1e-8, the weights (SGD) to 1e-9
            for a, b in zip(other["thetas"], one["thetas"]):
                torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)
            for key, value in one["net"].items():
                torch.testing.assert_close(other["net"][key], value, rtol=1e-9, atol=1e-10, msg=key)
        for key, value in zero["net"].items():  # the ranks hold the very same supernet
            assert torch.equal(first["net"][key], value), key
    for name in ("result.json", "round_01/samples.json", "round_02/samples.json"):
        a = json.loads((folder / "one" / name).read_text())
        b = json.loads((folder / "two" / name).read_text())
        assert _close(a, b), name


def test_a_run_stopped_on_two_processes_resumes_on_one(problem, float64_runs, tmp_path):
    """One machine lost: the run continues on fewer processes, with the same global batches. Stopped
    on both ranks one step after a mid-round checkpoint, then resumed alone, it ends as the
    uninterrupted one-process run does (float64; the tolerances of the test above)."""
    run, dump = tmp_path / "run", tmp_path / "dump"
    code, err = finish(torchrun(2, *runner(problem, run, dump), "--stop-after", "5"))
    assert code != 0 and (run / "checkpoint.pt").exists() and not (run / "round_01" / "thetas.json").exists()
    one = subprocess.run([sys.executable, *runner(problem, run, dump), "--resume"], env=ENV, capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    for want, got in zip(rounds(float64_runs / "dump1" / "rank0"), rounds(dump / "rank0"), strict=True):
        assert got["layer_ops"] == want["layer_ops"] and got["pruned"] == want["pruned"]
        for a, b in zip(got["thetas"], want["thetas"]):
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)
        for key, value in want["net"].items():
            torch.testing.assert_close(got["net"][key], value, rtol=1e-9, atol=1e-10, msg=key)


def test_batch_norms_on_each_share_with_sync_bn_off(problem, tmp_path):
    """sync_bn false (plain DDP's batch norm): each rank normalises with its own share's statistics,
    the ranks' weights and thetas stay equal, and the search completes."""
    config = tmp_path / "local.json"
    config.write_text(json.dumps({**json.loads(problem["config"].read_text()), "sync_bn": False, "rounds": 1}))
    code, err = finish(torchrun(2, str(RUNNER), str(problem["path"]), str(problem["npz"]), str(config),
                                str(tmp_path / "run"), str(tmp_path / "dump")))
    assert code == 0, err[-3000:]
    zero, first = (rounds(tmp_path / "dump" / f"rank{r}")[0] for r in range(2))
    assert zero["layer_ops"] == first["layer_ops"] and zero["pruned"] == first["pruned"]
    assert all(torch.equal(a, b) for a, b in zip(zero["thetas"], first["thetas"]))
    stats = [k for k in zero["net"] if k.endswith("running_mean")]
    params = [k for k in zero["net"] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert all(torch.equal(zero["net"][k], first["net"][k]) for k in params)
    assert any(not torch.equal(zero["net"][k], first["net"][k]) for k in stats)  # each share's own statistics
    assert json.loads((tmp_path / "run" / "result.json").read_text())["rounds"] == 1


def _close(a, b) -> bool:
    """Equal JSON documents, numbers within float64 reassociation (wall-clock times aside)."""
    times = ("seconds", "retrieval_seconds")
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a if k not in times)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-9 * max(1.0, abs(a))
    return a == b


def cli(problem, run: Path, *extra: str) -> list[str]:
    return ["-m", "hwnas.cli.main", "search", "run", "--table", str(problem["path"]), "--data", str(problem["npz"]),
            "--target-ms", str(problem["cfg"].target), "--config", str(problem["config"]), "-o", str(run),
            "--quiet", "--json", *extra]


def children(pid: int) -> dict[int, int]:
    """The processes whose parent is `pid`, by their torchrun RANK."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            for item in environ:
                if item.startswith(b"RANK="):
                    out[int(item[5:])] = int(entry.name)
    return out


def test_a_refusal_on_rank_0_stops_every_rank(problem, tmp_path):
    code, err = finish(torchrun(2, *cli(problem, tmp_path / "none", "--resume")))
    assert code != 0 and err.count("holds no checkpoint to resume") == 2, err[-3000:]  # both ranks, none waits
    assert not (tmp_path / "none").exists()
    # rank 0 cannot make the run folder (a name longer than the file system takes): its refusal on every rank
    code, err = finish(torchrun(2, *cli(problem, tmp_path / ("x" * 300) / "run")))
    # the two processes share stderr: their lines may interleave, so count the messages, not lines
    assert code != 0 and err.count("hwnas: error: file name too long") == 2, err[-3000:]
    assert "internal error" not in err


def _failing_main_worker(rank: int, world: int, port: int, out: str) -> None:
    from hwnas.search.distributed import join

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    group = join("cpu")

    def decide() -> int:
        raise ValueError("rank 0's own failure")

    try:
        group.from_main(decide)
    except Exception as exc:  # noqa: BLE001 - what each rank raised is the result
        raised = f"{type(exc).__name__}: {exc}"
    finally:
        group.close()
    Path(f"{out}.{rank}").write_text(raised)


def test_an_error_on_rank_0_that_is_not_a_refusal_stops_every_rank(tmp_path):
    """Rank 0 raises its own error as it was; the others raise one that names it, instead of
    waiting for a result that never comes."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_failing_main_worker, args=(2, port, str(tmp_path / "raised")), nprocs=2)
    assert (tmp_path / "raised.0").read_text() == "ValueError: rank 0's own failure"
    assert (tmp_path / "raised.1").read_text() == (
        "HwnasError: rank 1: rank 0 failed (ValueError: rank 0's own failure); its own message says more")


def test_a_batch_that_does_not_split_is_refused_before_anything_is_written(problem, tmp_path):
    config = tmp_path / "odd.json"
    config.write_text(json.dumps({**json.loads(problem["config"].read_text()), "batch": 33}))
    argv = cli(problem, tmp_path / "run")
    argv[argv.index("--config") + 1] = str(config)
    code, err = finish(torchrun(2, *argv))
    assert code != 0 and err.count("the batch (33) does not split evenly over 2 processes") == 2, err[-3000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks' processes through /proc (Linux)")
def test_a_killed_rank_fails_the_run_and_resume_completes_it(problem, tmp_path):
    whole = tmp_path / "whole"
    proc = torchrun(2, *cli(problem, whole))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert json.loads(out)["rounds"] == 2  # one report (rank 0's), not one per process

    run = tmp_path / "killed"
    proc = torchrun(2, *cli(problem, run))
    log = run / "log.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # round 1 under way, past a checkpoint
        steps = [json.loads(line).get("step", 0) for line in log.read_text().splitlines()] if log.exists() else []
        if steps and max(steps) >= 5:
            break
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    ranks = children(proc.pid)
    assert set(ranks) == {0, 1}, ranks
    os.kill(ranks[1], signal.SIGKILL)
    code, err = finish(proc)
    assert code != 0
    assert "Signal 9 (SIGKILL)" in err or "SIGKILL" in err, err[-3000:]
    assert not (run / "result.json").exists() and (run / "checkpoint.pt").exists()

    code, err = finish(torchrun(2, *cli(problem, run, "--resume")))
    assert code == 0, err[-3000:]
    for r in (1, 2):
        a = json.loads((whole / f"round_{r:02d}" / "thetas.json").read_text())
        b = json.loads((run / f"round_{r:02d}" / "thetas.json").read_text())
        assert a["layers"] == b["layers"] and a["pruned"] == b["pruned"]
        assert _close(a["thetas"], b["thetas"])
    assert _close(json.loads((whole / "result.json").read_text())["front"],
                  json.loads((run / "result.json").read_text())["front"])

