"""The Pareto retrieval's evaluation of all candidates at once (hwnas.search.evaluation) against the
per-candidate reference (hwnas.search.retrieval.evaluate): the same batch-norm statistics, the
same accuracies to the bit and the same front; its progress, in the search's log."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from hwnas.cli.main import main
from hwnas.search import Search
from hwnas.search import evaluation as ev
from hwnas.search import run as run_mod
from hwnas.search.data import fixed_batches, load_npz
from hwnas.search.evaluation import evaluate_all, trie_order
from hwnas.search.pareto import pareto_front
from hwnas.search.retrieval import evaluate, recalibrate_bn
from hwnas.search.training import RoundTrainer
from hwnas.supernet.cell import sample_config

from tiny_search import interval_config, make_tiny, tiny_config, one_thread  # noqa: F401 - autouse: one torch thread


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("retrieval"))


def trained(tiny, dtype):
    """A supernet of 3 ops per layer after a few weight steps (its BN buffers then differ from the
    statistics any architecture gets), the data in `dtype`, and its loaders."""
    ds = load_npz(tiny["npz"])
    ds.images = ds.images.to(dtype)
    slots = tiny["table"].macro().slots(1.0)
    with torch.random.fork_rng(devices=[]):
        torch.set_default_dtype(dtype)
        try:
            trainer = RoundTrainer(tiny["table"], [[0, 2, 4] for _ in slots], [[] for _ in slots],
                                   tiny_config(tiny, epochs=1), ds, ds, 1)
            for _ in range(4):
                trainer.train_step()
        finally:
            torch.set_default_dtype(torch.float32)
    # batches of unequal size (the last one short), as the search's loaders give them
    return trainer, fixed_batches(ds, 100, 32, 1), fixed_batches(ds, 70, 32, 2)


def draws(trainer, count, seed=0):
    """Distinct configurations from P(theta) (theta pushed off the uniform start, so that some
    prefixes are common and some rare)."""
    gen = torch.Generator().manual_seed(seed)
    probs = [torch.rand(len(t), generator=gen) * 0.8 + 0.1 for t in trainer.fitness.thetas]
    out, seen = [], set()
    while len(out) < count:
        configs = [sample_config(len(p), nb, gen, p) for p, nb in zip(probs, trainer.fitness.needs_branch)]
        key = tuple(tuple(c.tolist()) for c in configs)
        if key not in seen:
            seen.add(key)
            out.append(configs)
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_all_at_once_gives_the_references_accuracies_to_the_bit(tiny, dtype):
    trainer, calibration, held_out = trained(tiny, dtype)
    configs = draws(trainer, 40)
    before = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    # small groups and a tight memory bound: several groups, each a few subtrees, walked keeping
    # no branch outputs (each child's branches run again for it)
    fast = evaluate_all(trainer.net, configs, calibration, held_out, group_size=9, memory_mb=0.02)
    for key, value in trainer.net.state_dict().items():  # the supernet is left as it was
        assert torch.equal(value, before[key]), key
    ref = [evaluate(trainer.net, c, calibration, held_out) for c in configs]
    assert fast == ref
    assert len(set(ref)) > 5  # accuracies that differ: equality means something
    costs = [float(sum(int(c.sum()) * (i + 1) for i, c in enumerate(cfg))) for cfg in configs]
    assert pareto_front(list(zip(costs, fast))) == pareto_front(list(zip(costs, ref)))
    # one group holding them all, and groups of one: the same again
    assert evaluate_all(trainer.net, configs, calibration, held_out, group_size=10**6) == ref
    assert evaluate_all(trainer.net, configs[:6], calibration, held_out, group_size=1) == ref[:6]


def test_statistics_are_the_references(tiny):
    """Each (prefix, branch)'s recalibrated statistics equal the running statistics the reference
    sets in that branch's batch norms, to the bit; calibrated on other images they differ (the
    comparison can fail)."""
    trainer, calibration, _ = trained(tiny, torch.float64)
    net = trainer.net
    configs = draws(trainer, 12, seed=3)
    keys = [ev._key(c) for c in configs]

    @torch.no_grad()
    def statistics(batches):
        walker = ev._Walker(net, "cpu", lambda _: None)
        root = ev._build(keys, range(len(configs)))
        walker.prepare(root)
        for x, _ in batches:
            walker.calibrate(root, x)
        walker.finish(root)
        return walker, root

    walker, root = statistics(calibration)
    other, other_root = statistics(fixed_batches(load_npz(tiny["npz"]), 100, 32, 9))
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    differs = 0
    for cfg, key in zip(configs, keys):
        recalibrate_bn(net, cfg, calibration)
        bn = net.stem.bn
        assert torch.equal(walker.stem_stats[0][0], bn.running_mean) and torch.equal(walker.stem_stats[0][1],
                                                                                   bn.running_var)
        node, other_node = root, other_root
        for d, config in enumerate(key):
            for b in [j for j, on in enumerate(config) if on]:
                for (_, module, _), (mean, var), (o_mean, _) in zip(walker.branch_steps[d][b], node.stats[b],
                                                                    other_node.stats[b]):
                    assert torch.equal(mean, module.running_mean) and torch.equal(var, module.running_var)
                    differs += not torch.equal(o_mean, module.running_mean)
            node, other_node = node.children[config], other_node.children[config]
        net.load_state_dict(saved)
    assert differs > 0


class LiveBytes(TorchDispatchMode):
    """The most bytes of tensors allocated under it alive at once (an op's output that shares its
    memory with an input, a view or an in-place result, is not a new allocation)."""

    def __init__(self):
        super().__init__()
        self.live, self.peak = {}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in given:
                storage = t.untyped_storage()
                self.live.setdefault(storage.data_ptr(), (StorageWeakRef(storage), storage.nbytes()))
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))
        return out


def test_the_walk_keeps_its_activations_within_the_budget(tiny):
    """The walk's activations, measured tensor by tensor, stay within its estimate for the plan it
    takes, and so within its budget; without outputs kept they take less than with all kept (the
    budget changes what is held), and the accuracies are the reference's either way."""
    trainer, calibration, held_out = trained(tiny, torch.float32)
    configs = draws(trainer, 20, seed=11)
    keys = [ev._key(c) for c in configs]
    batch, size = 32, 4  # the loaders' largest batch, float32
    walker = ev._Walker(trainer.net, "cpu", lambda _: None)
    layers = len(walker.cells)
    everything, nothing = (walker.peak([hold] * layers) * batch * size for hold in (True, False))
    assert nothing < everything
    middle = (everything + nothing) / 2
    measured = {}
    for budget in (math.inf, middle, 0.0):
        walker.budget = budget
        hold = walker.plan(batch)
        estimate = walker.peak(hold) * batch * size
        root = ev._build(keys, range(len(configs)))
        walker.prepare(root)  # the statistics' buffers: their own share of the memory
        plans, plan = [], walker.plan
        walker.plan = lambda images: plans.append((images, plan(images))) or plans[-1][1]
        live = LiveBytes()
        with torch.no_grad(), live:
            for x, _ in calibration:
                walker.calibrate(root, x)
            walker.finish(root)
            for x, y in held_out:
                walker.held_out(root, x, y)
        del walker.plan
        assert plans[0] == (batch, hold)  # the largest batch's; a smaller one's fits too
        assert live.peak <= estimate
        if budget == middle:
            assert not all(hold) and estimate <= budget
        measured[budget] = live.peak
    assert measured[0.0] < measured[math.inf]
    ref = [evaluate(trainer.net, c, calibration, held_out) for c in configs]
    for memory_mb in (None, 1e-6):
        assert evaluate_all(trainer.net, configs, calibration, held_out, memory_mb=memory_mb) == ref


def test_ranks_shares_in_trie_order_give_the_same_accuracies(tiny):
    """A data-parallel run: each rank evaluates a consecutive share of the trie order; gathered,
    the accuracies are those of one process evaluating all."""
    trainer, calibration, held_out = trained(tiny, torch.float64)
    configs = draws(trainer, 30, seed=5)
    order = trie_order(configs)
    assert sorted(order) == list(range(30))
    keys = [tuple(tuple(c.tolist()) for c in configs[i]) for i in order]
    assert keys == sorted(keys)
    whole = evaluate_all(trainer.net, configs, calibration, held_out)
    gathered = {}
    for share in (order[:11], order[11:20], order[20:]):
        for i, acc in zip(share, evaluate_all(trainer.net, [configs[i] for i in share], calibration, held_out)):
            gathered[i] = acc
    assert [gathered[i] for i in range(30)] == whole


def test_progress_counts_to_the_total_with_the_best_so_far(tiny, monkeypatch):
    trainer, calibration, held_out = trained(tiny, torch.float32)
    configs = draws(trainer, 25, seed=7)
    monkeypatch.setattr(ev, "REPORT_EVERY_S", 0.0)
    seen: list[ev.Progress] = []
    accs = evaluate_all(trainer.net, configs, calibration, held_out, on_progress=seen.append, group_size=8)
    assert len(seen) > 8  # within the groups too, not only at their ends
    assert [p.evaluated for p in seen] == sorted(p.evaluated for p in seen)
    assert seen[0].evaluated == 0 and seen[0].best is None and seen[0].left_s is None
    assert {p.evaluated for p in seen} >= {8, 16, 24, 25}  # groups of at most 8
    assert all(p.total == 25 for p in seen)
    last = seen[-1]
    assert last.evaluated == 25 and last.best == max(accs) and last.left_s == 0.0
    assert all(p.left_s is not None and p.left_s >= 0 for p in seen[1:])
    assert [p.elapsed_s for p in seen] == sorted(p.elapsed_s for p in seen)


def test_quiet_hides_the_bars_and_the_log_shows_the_retrievals_progress(tiny, tmp_path, monkeypatch):
    """`hwnas search run --quiet`: no progress bar is drawn, and the log records the retrieval's
    progress at least every 10 s (on a clock that advances 1 s at each reading); the bar, hidden
    or not, is given the numbers of the log lines."""
    ticks = itertools.count()
    monkeypatch.setattr(ev, "clock", lambda: float(next(ticks)))
    bars: list[dict] = []

    class Bar:
        def __init__(self, total, *args, **kwargs):
            self.n = 0
            bars.append({"total": total, "enabled": kwargs.get("enabled", True), "states": []})

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n=1):
            self.n += n

        def set_postfix(self, **kw):
            bars[-1]["states"].append((self.n, kw))

    monkeypatch.setattr(run_mod, "progress_bar", Bar)
    cfg = tiny_config(tiny, rounds=1, epochs=1, samples=20)  # a budget: no edge samples
    config = tmp_path / "search.json"
    config.write_text(json.dumps({k: v for k, v in cfg.to_dict().items()
                                  if k not in ("metric", "target", "rounds", "k", "epochs")}))
    run = tmp_path / "run"
    assert main(["search", "run", "--table", str(tiny["path"]), "--data", str(tiny["npz"]), "--target-ms",
                 str(cfg.target), "--rounds", "1", "--K", "2", "--epochs", "1", "--config", str(config),
                 "-o", str(run), "--quiet"]) == 0
    assert bars and not any(b["enabled"] for b in bars)
    lines = [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r.get("event") == "retrieval"]
    samples = json.loads((run / "round_01" / "samples.json").read_text())["samples"]
    first, last = lines[0], lines[-1]
    assert first["evaluated"] == 0 and first["total"] == len(samples) and first["best_accuracy"] is None
    assert last["evaluated"] == last["total"] == len(samples)
    assert last["best_accuracy"] == max(s["accuracy"] for s in samples) and last["left_s"] == 0
    assert all(r["round"] == 1 and r["left_s"] is not None for r in lines[1:])
    elapsed = [r["elapsed_s"] for r in lines]
    assert len(lines) > 4 and all(0 < b - a <= 10 for a, b in zip(elapsed, elapsed[1:]))
    # the evaluation's bar was given every report, the log lines among them
    bar = next(b for b in bars if b["total"] == len(samples))
    shown = [(n, kw["best"], kw["left"]) for n, kw in bar["states"]]
    logged = [(r["evaluated"], run_mod.accuracy_text(r["best_accuracy"]), run_mod.seconds_text(r["left_s"]))
              for r in lines]
    rest = iter(shown)
    assert all(line in rest for line in logged)  # in order
    assert len(shown) > len(logged)


def test_a_search_evaluates_as_the_reference_does(tiny, tmp_path, monkeypatch):
    """The search's samples get the reference's accuracies (the reference swapped in)."""
    cfg = interval_config(tiny, rounds=1, epochs=1, samples=10, edge_samples=3)  # edge samples evaluated too
    Search(tiny["table"], load_npz(tiny["npz"]), cfg, tmp_path / "fast", progress=False).run()

    def one_at_a_time(net, configs_list, calibration, held_out, device="cpu", on_progress=None, **kw):
        return [evaluate(net, c, calibration, held_out, device) for c in configs_list]

    monkeypatch.setattr(run_mod, "evaluate_all", one_at_a_time)
    Search(tiny["table"], load_npz(tiny["npz"]), cfg, tmp_path / "ref", progress=False).run()
    fast, ref = (json.loads((tmp_path / r / "round_01" / "samples.json").read_text()) for r in ("fast", "ref"))
    assert fast == ref
    assert len({s["accuracy"] for s in ref["samples"]}) > 1


def test_the_planned_work_is_the_work_the_walk_does(tiny, monkeypatch):
    """`planned_work` (the round estimate's scale from one timed candidate to all) counts what the
    walk then runs, shared prefixes once: the sum of the work the walk reports, branch by branch."""
    trainer, calibration, held_out = trained(tiny, torch.float32)
    configs = draws(trainer, 30)
    done: list[float] = []
    counted = ev._Meter.work

    def work(self, amount):
        done.append(amount)
        counted(self, amount)

    monkeypatch.setattr(ev._Meter, "work", work)
    evaluate_all(trainer.net, configs, calibration, held_out)
    planned = ev.planned_work(trainer.net, configs, calibration, held_out)
    assert sum(done) == pytest.approx(planned, rel=1e-12) and planned > 0
    alone = [ev.planned_work(trainer.net, [c], calibration, held_out) for c in configs]
    assert planned < sum(alone)  # the shared prefixes are counted once
    assert ev.planned_work(trainer.net, [], calibration, held_out) == 0.0


def test_the_round_estimate_fits_a_fixed_cost_and_a_cost_per_mac():
    from hwnas.search.estimate import retrieval_seconds

    # timings that are exactly 0.5 s + 2 s per unit of work: the fit gives any other work's time
    assert retrieval_seconds([(1.0, 2.5), (3.0, 6.5)], 10.0) == pytest.approx(20.5)
    # one timing, or one not larger than the first: in proportion to the first
    assert retrieval_seconds([(2.0, 3.0)], 10.0) == pytest.approx(15.0)
    assert retrieval_seconds([(2.0, 3.0), (4.0, 2.9)], 10.0) == pytest.approx(15.0)
    # a fitted fixed cost below zero (noise) is taken as none
    assert retrieval_seconds([(1.0, 1.0), (2.0, 3.0)], 10.0) == pytest.approx(20.0)
