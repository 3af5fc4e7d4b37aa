"""The NSE search (hwnas.search): Pareto front, evolution, lock and rehearse, edge samples, BN
recalibration, resume, and an end-to-end run whose architectures export to ONNX."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from hwnas.cli.main import main
from hwnas.errors import HwnasError
from hwnas.profiling.predict import predict
from hwnas.search import Evolution, Search, SearchConfig, TensorImages, aggregate, pareto_front
from hwnas.search.data import load_npz
from hwnas.search.constraint import Constraint, constrained_front, draw
from hwnas.search.retrieval import Sampler, recalibrate_bn
from hwnas.search.run import architecture
from hwnas.search.training import RoundTrainer

from conftest import REPO
from tiny_search import interval_config, make_tiny, tiny_config, one_thread  # noqa: F401 - autouse: one torch thread


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("nse"))


# -- Pareto front ------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_pareto_front_matches_brute_force(seed):
    rng = random.Random(seed)
    pts = [(rng.randint(0, 8), rng.randint(0, 8)) for _ in range(40)]  # small ranges: many ties

    def dominated(i):
        c, a = pts[i]
        return any((c2 <= c and a2 >= a and (c2, a2) != (c, a)) for c2, a2 in pts)

    undominated = {pts[i] for i in range(len(pts)) if not dominated(i)}
    front = pareto_front(pts)
    assert {pts[i] for i in front} == undominated
    assert len(front) == len(undominated)  # of equal points, one
    assert [pts[i][0] for i in front] == sorted(pts[i][0] for i in front)


# -- aggregation and replenishment -------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_evolution_invariants(seed):
    rng = random.Random(seed)
    layers, ops, k = 4, 12, 3
    evo = Evolution.start(layers, ops, k, seed)
    seen = [list(s) for s in evo.subsets]
    rounds = 0
    while True:
        assert all(len(s) == k and len(set(s)) == k for s in evo.subsets)
        front = [[rng.sample(s, rng.randint(0, len(s))) for s in evo.subsets] for _ in range(rng.randint(1, 3))]
        inherited = aggregate(front, layers)
        for layer in range(layers):  # the union of the front's ops
            assert set(inherited[layer]) == {op for arch in front for op in arch[layer]}
        before = [list(s) for s in evo.subsets]
        if not evo.replenish(inherited):
            assert any(len(inherited[i]) + len(set(range(ops)) - set(seen[i])) < k for i in range(layers))
            assert evo.subsets == before  # nothing changed
            break
        rounds += 1
        for layer in range(layers):
            subset = evo.subsets[layer]
            assert set(inherited[layer]) <= set(subset)  # inherited ops kept
            assert evo.locked[layer] == inherited[layer]
            fresh = [op for op in subset if op not in inherited[layer]]
            assert not set(fresh) & set(seen[layer])  # never an op the layer has had before
            seen[layer].extend(fresh)
            assert evo.pools[layer].traversed == seen[layer]
    assert rounds >= 2


def test_a_space_smaller_than_k_is_searched_whole():
    evo = Evolution.start(3, 5, 6, 0)
    assert all(sorted(s) == list(range(5)) for s in evo.subsets)
    assert not evo.replenish([[0], [1, 2], []])  # nothing fresh is left: NSE's end after one round


# -- lock and rehearse -------------------------------------------------------------------------

def test_simplify_never_prunes_inherited_ops(tiny):
    table = tiny["table"]
    ds = load_npz(tiny["npz"])
    slots = table.macro().slots(1.0)
    layer_ops = [[0, 1, 2] for _ in slots]
    locked = [[1] if i % 2 else [] for i in range(len(slots))]
    trainer = RoundTrainer(table, layer_ops, locked, tiny_config(tiny), ds, ds, 1)
    with torch.no_grad():
        for t in trainer.fitness.thetas:
            t.copy_(torch.tensor([-5.0, -5.0, -1.0]))
        trainer.fitness.thetas[0].copy_(torch.tensor([-5.0, -5.0, -5.0]))
    pruned = trainer.simplify()
    for i, (slot, ops) in enumerate(zip(slots, trainer.layer_ops)):
        expected = [op for op in (0, 1, 2) if op in locked[i] or (op == 2 and i != 0)]
        if not expected and slot.position.cell_type != "N":
            expected = [0]  # the best (first of the ties) stays in an R/E cell
        assert ops == expected, (i, slot.position.cell_type)
        assert trainer.fitness.thetas[i].numel() == len(ops) == len(trainer.cells[i].branches)
    assert all(set(p["ops"]).isdisjoint(locked[p["layer"]]) for p in pruned)
    trainer.train_step()  # the pruned supernet and its optimisers still train


# -- the regularizer and theta's optimiser as settings ------------------------------------------

def test_regularizer_and_theta_settings_reach_the_trainer(tiny):
    ds = load_npz(tiny["npz"])
    layers = [[0, 1, 2] for _ in tiny["table"].macro().slots(1.0)]
    locked = [[] for _ in layers]
    target = tiny["target"]
    default = RoundTrainer(tiny["table"], layers, locked, tiny_config(tiny), ds, ds, 1)
    assert default.regularizer.outer == "expected"
    assert default.regularizer.alpha == pytest.approx(2e-2 * (7.0 / target) ** 2)  # relative to the target
    assert default.theta_opt.param_groups[0]["betas"] == (0.9, 0.9)
    paper = RoundTrainer(tiny["table"], layers, locked, tiny_config(tiny, outer="sampled", alpha_scaling="fixed",
                                                                    theta_beta2=0.999, theta_schedule="constant"),
                         ds, ds, 1)
    assert paper.regularizer.outer == "sampled" and paper.regularizer.alpha == 2e-2
    assert paper.theta_opt.param_groups[0]["betas"] == (0.9, 0.999)
    for trainer in (default, paper):
        for _ in range(4):
            trainer.train_step()
    assert paper.theta_opt.param_groups[0]["lr"] == 0.2  # constant
    assert default.theta_opt.param_groups[0]["lr"] < 0.2  # cosine-decayed


# -- edge samples and pricing ------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["budget", "interval"])
def test_draw_counts_drawn_architectures_and_keeps_those_within_the_constraint(tiny, mode):
    """D is the number of distinct architectures drawn (NSE's), not of those accepted; edge samples
    only for an interval, only just below its lower end; prices are hwnas predict's."""
    table = tiny["table"]
    ds = load_npz(tiny["npz"])
    slots = table.macro().slots(1.0)
    trainer = RoundTrainer(table, [[0, 1, 2, 3, 4] for _ in slots], [[] for _ in slots], tiny_config(tiny), ds, ds, 1)
    sampler = Sampler(trainer.fitness, trainer.costs, trainer.layer_ops)
    target = tiny["target"]
    constraint = Constraint(mode, target, margin=0.3, edge_margin=0.3)
    drawn = draw(sampler, constraint, 200, 10 if mode == "interval" else 0, torch.Generator().manual_seed(0))
    inside = [c for c in drawn.candidates if c.kind == "sample"]
    edge = [c for c in drawn.candidates if c.kind == "edge"]
    assert drawn.drawn == 200 and len(sampler.seen) >= 200 and drawn.draws >= 200
    assert 0 < len(inside) < 200  # some of the D drawn are discarded
    if mode == "budget":
        assert all(c.cost <= target for c in inside) and not edge
        assert any(c.cost > 0.9 * target for c in inside)  # up to the budget, no lower end
    else:
        assert all(target <= c.cost <= 1.3 * target for c in inside)
        assert len(edge) == 10 and all(0.7 * target <= c.cost < target for c in edge)
    assert len({c.key for c in drawn.candidates}) == len(drawn.candidates)  # distinct
    assert drawn.summary()["accepted"] == len(inside)
    for c in inside[:5] + edge[:5]:  # the sampler's price is hwnas predict's
        assert c.cost == pytest.approx(predict(table, architecture(table, c.ops, "a"))["latency_ms"], rel=1e-9)


# -- BN recalibration --------------------------------------------------------------------------

def test_bn_recalibration_equals_direct_statistics(tiny):
    table = tiny["table"]
    ds = load_npz(tiny["npz"])
    slots = table.macro().slots(1.0)
    trainer = RoundTrainer(table, [[0, 2, 4] for _ in slots], [[] for _ in slots], tiny_config(tiny), ds, ds, 1)
    net = trainer.net
    configs = [torch.tensor([True, False, True]) for _ in slots]
    batches = [(ds.images[i:i + 40].expand(-1, 3, -1, -1), ds.labels[i:i + 40]) for i in range(0, 160, 40)]
    recalibrate_bn(net, configs, batches)
    # Reference: forward the same batches in training mode on a copy and collect each BN's inputs.
    ref = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    inputs: dict[torch.nn.Module, list[torch.Tensor]] = {m: [] for m in ref}
    handles = [m.register_forward_hook(lambda m, i, o: inputs[m].append(i[0].detach().clone())) for m in ref]
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    with torch.no_grad():
        for x, _ in batches:
            net(x, configs)
    for h in handles:
        h.remove()
    net.load_state_dict(saved)
    used = [m for m in ref if inputs[m]]
    assert len(used) > 10
    for m in used:
        assert m.running_mean is not None and m.running_var is not None
        x = torch.cat(inputs[m]).double().transpose(0, 1).reshape(m.num_features, -1)
        torch.testing.assert_close(m.running_mean.double(), x.mean(1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m.running_var.double(), x.var(1), rtol=1e-4, atol=1e-6)


# -- data --------------------------------------------------------------------------------------

def test_data_mismatch_is_a_clear_error(tiny, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((8, 3, 12, 12), np.float32), labels=np.arange(8) % 4)
    code = main(["search", "run", "--table", str(tiny["path"]), "--data", str(bad), "--target-ms", "1",
                 "-o", str(tmp_path / "run"), "--quiet"])
    assert code == 1
    np.savez(bad, images=np.zeros((8, 3, 16, 16), np.float32), labels=np.arange(8) % 7)
    with pytest.raises(HwnasError, match="7 classes.*ends in 4"):
        Search(tiny["table"], load_npz(bad), tiny_config(tiny), tmp_path / "run2")
    np.savez(bad, pixels=np.zeros((8, 3, 16, 16), np.float32))
    with pytest.raises(HwnasError, match="no array images or labels"):
        load_npz(bad)


def test_image_folder_matches_npz(tmp_path):
    image = pytest.importorskip("PIL.Image")
    from hwnas.search.data import load_image_folder

    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    for i, a in enumerate(arrays):
        (tmp_path / f"class{i % 2}").mkdir(exist_ok=True)
        image.fromarray(a).save(tmp_path / f"class{i % 2}" / f"{i}.png")
    ds = load_image_folder(tmp_path)
    order = [0, 2, 4, 1, 3, 5]  # class0 files first, then class1, each sorted by name
    ref = TensorImages(torch.from_numpy(arrays[order].transpose(0, 3, 1, 2).copy()), torch.tensor([0, 0, 0, 1, 1, 1]))
    torch.testing.assert_close(ds.images, ref.images)
    assert ds.labels.tolist() == ref.labels.tolist() and ds.classes == ["class0", "class1"]


# -- the whole search --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(tiny):
    """One uninterrupted 2-round search through the CLI, with a YAML config file."""
    cfg = tiny_config(tiny)
    folder = tiny["folder"]
    config = folder / "search.yaml"
    settings = {k: v for k, v in cfg.to_dict().items()
                if k not in ("metric", "target", "rounds", "k", "epochs", "samples")}
    config.write_text(pytest.importorskip("yaml").safe_dump(settings))
    run = folder / "run"
    torch.set_num_threads(1)
    code = main(["search", "run", "--table", str(tiny["path"]), "--data", str(tiny["npz"]), "--target-ms",
                 str(cfg.target), "--rounds", "2", "--K", "2", "--epochs", "2", "--config", str(config), "-o", str(run),
                 "--samples", str(cfg.samples), "--quiet", "--json"])
    assert code == 0
    return run


def test_search_writes_rounds_and_architectures(tiny, finished, tmp_path, capsys):
    run = finished
    result = json.loads((run / "result.json").read_text())
    assert result["rounds"] == 2 and len(result["history"]) == 2
    assert (run / "config.source.yaml").exists()
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["config"]["k"] == 2 and recorded["config"]["samples"] == 12
    sources = recorded["sources"]
    assert sources["samples"] == sources["k"] == "command line"
    assert sources["constraint"] == f"config file {tiny['folder'] / 'search.yaml'}"
    assert recorded["constraint"] == {"mode": "budget", "target": tiny["target"], "upper": tiny["target"]}
    assert recorded["regularizer"]["outer"] == "expected" and recorded["regularizer"]["alpha"] > 0
    for r in (1, 2):
        for name in ("subset.json", "thetas.json", "samples.json", "front.json"):
            assert (run / f"round_{r:02d}" / name).exists()
        samples = json.loads((run / f"round_{r:02d}" / "samples.json").read_text())["samples"]
        front = json.loads((run / f"round_{r:02d}" / "front.json").read_text())["front"]
        points = [(s["cost"], s["accuracy"]) for s in samples]
        assert sorted(map(tuple, ([f["cost"], f["accuracy"]] for f in front))) == sorted(
            points[i] for i in pareto_front(points))
        assert all(s["cost"] <= tiny["target"] and s["kind"] != "edge" for s in samples)  # a budget: no edge samples
    subset1 = json.loads((run / "round_01" / "subset.json").read_text())
    subset2 = json.loads((run / "round_02" / "subset.json").read_text())
    front1 = json.loads((run / "round_01" / "front.json").read_text())["front"]
    for layer, (old, new) in enumerate(zip(subset1["layers"], subset2["layers"])):
        kept = {op for f in front1 for op in f["ops"][layer]}
        assert kept <= set(new) and set(subset2["locked"][layer]) == kept and len(new) == 2
        assert set(new) - kept <= set(range(5)) - set(old)  # refilled with ops the layer had not had
    samples2 = json.loads((run / "round_02" / "samples.json").read_text())["samples"]
    assert {"previous", "sample"} <= {s["kind"] for s in samples2}
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any("expected_cost" in r for r in log) and sum(r.get("event") == "round" for r in log) == 2
    # each round's estimate, from its first steps: round 1 times one evaluation and counts the most
    # candidates it can have; round 2 takes round 1's count and pace
    estimates = [r for r in log if r.get("event") == "estimate"]
    rounds = [r for r in log if r.get("event") == "round"]
    assert [e["round"] for e in estimates] == [1, 2]
    assert estimates[0]["candidates"] == 12 and not estimates[0]["measured_retrieval"]
    assert estimates[1]["candidates"] == rounds[0]["evaluated"] and estimates[1]["measured_retrieval"]
    assert estimates[1]["candidate_s"] == pytest.approx(rounds[0]["retrieval_seconds"] / rounds[0]["evaluated"],
                                                        rel=0.01, abs=1e-3)
    for e in estimates:
        assert e["weight_steps"] == result["history"][0]["steps"] - 5  # 5 timed: 1 skipped, 2 with theta, 2 without
        assert e["weight_step_s"] > 0 and e["candidate_s"] > 0
        assert e["total_s"] == pytest.approx(e["train_s"] + e["theta_s"] + e["retrieval_s"], abs=0.2)
    final = result["front"]
    assert final and all(f["latency_ms"] <= tiny["target"] for f in final)
    capsys.readouterr()
    for f in final:  # architecture files the other commands take as they are
        path = run / f["file"]
        assert main(["predict", "--table", str(tiny["path"]), str(path), "--json"]) == 0
        priced = json.loads(capsys.readouterr().out)
        assert priced["latency_ms"] == pytest.approx(f["latency_ms"]) and priced["macs"] == f["macs"]
    path = run / final[0]["file"]
    assert main(["export", "onnx", str(path), "-o", str(tmp_path / "net.onnx"), "--batch", "2"]) == 0
    assert (tmp_path / "net.onnx").stat().st_size > 0
    assert main(["bench", str(path), "--backend", "ort", "--batch", "16", "--warmup-ms", "1", "--duration-s", "0.01",
                 "--iterations", "2", "--table", str(tiny["path"]), "--json"]) == 0


def test_interval_search_keeps_only_architectures_within_the_interval(tiny, tmp_path, capsys):
    """NSE's interval: the edge samples below it correct each round's front and never join it; only
    the front's ops are inherited and locked; only architectures within the interval are results."""
    cfg = interval_config(tiny, epochs=1)
    low, high = cfg.target, cfg.target * (1 + cfg.margin)
    run = tmp_path / "run"
    result = Search(tiny["table"], load_npz(tiny["npz"]), cfg, run, progress=True).run()
    err = capsys.readouterr().err  # each round's estimate is printed (no bar: not a terminal)
    assert "round 1: about" in err and "round 2: about" in err and "candidates" in err
    rounds = [{name: json.loads((run / f"round_{r:02d}" / f"{name}.json").read_text())
               for name in ("samples", "front", "subset")} for r in (1, 2)]
    for r, files in enumerate(rounds, 1):
        samples, front = files["samples"]["samples"], files["front"]["front"]
        assert all(0.5 * low <= s["cost"] < low if s["kind"] == "edge" else low <= s["cost"] <= high for s in samples)
        points = [(s["cost"], s["accuracy"]) for s in samples]
        unconstrained = pareto_front(points)
        # the front: the candidates within the interval that no candidate (edge samples included) dominates
        assert sorted((f["cost"], f["accuracy"]) for f in front) == sorted(
            points[i] for i in unconstrained if samples[i]["kind"] != "edge")
        assert samples[unconstrained[0]]["kind"] == "edge"  # the cheapest candidate: an edge sample, filtered out
    inherited = aggregate([f["ops"] for f in rounds[0]["front"]["front"]], len(rounds[0]["subset"]["layers"]))
    assert rounds[1]["subset"]["locked"] == inherited  # the front's ops, and no edge sample's
    assert all(low <= f["latency_ms"] <= high for f in result.front)


def test_resume_after_a_kill_gives_the_same_thetas(tiny, finished, tmp_path):
    cfg = tiny_config(tiny)
    run = tmp_path / "run"
    search = Search(tiny["table"], load_npz(tiny["npz"]), cfg, run, progress=False)
    search.stop_after = 7  # mid-round 1, one step after a checkpoint: that step is lost and redone
    with pytest.raises(KeyboardInterrupt):
        search.run()
    assert (run / "checkpoint.pt").exists() and not (run / "round_01" / "thetas.json").exists()
    # Resumed in a fresh process, as after a real kill (one thread, as the uninterrupted run).
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "hwnas.cli.main", "search", "run", "--table", str(tiny["path"]),
                           "--data", str(tiny["npz"]), "--target-ms", str(cfg.target), "--rounds", "2", "--K", "2",
                           "--epochs", "2", "--samples", str(cfg.samples), "--config", str(tiny["folder"] / "search.yaml"),
                           "-o", str(run),
                           "--resume", "--quiet", "--json", "--threads", "1"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    for r in (1, 2):
        a = json.loads((finished / f"round_{r:02d}" / "thetas.json").read_text())
        b = json.loads((run / f"round_{r:02d}" / "thetas.json").read_text())
        assert a == b
    assert json.loads((finished / "result.json").read_text())["front"] == json.loads((run / "result.json").read_text())["front"]


def test_preset_through_the_cli(tiny, tmp_path, capsys):
    """--preset nse-paper: NSE's settings, the options given overriding them, each value's source
    in config.json; a front that stays empty is an error that says what to change."""
    run = tmp_path / "run"
    args = ["search", "run", "--table", str(tiny["path"]), "--data", str(tiny["npz"]), "--target-ms",
            str(interval_config(tiny).target), "--preset", "nse-paper", "--batch", "32", "--epochs", "1",
            "--rounds", "1", "--samples", "6", "--edge-samples", "2", "-o", str(run), "--quiet"]
    code = main(args + ["--outer", "expected", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    recorded = json.loads((run / "config.json").read_text())
    config, sources = recorded["config"], recorded["sources"]
    assert (config["lr"], config["warmup_epochs"], config["theta_lr"], config["k"]) == (0.4, 2.0, 0.1, 6)
    assert (config["constraint"], config["outer"], config["alpha_scaling"]) == ("interval", "expected", "fixed")
    assert sources["lr"] == sources["eval_images"] == sources["alpha_scaling"] == "preset nse-paper"
    assert sources["batch"] == sources["outer"] == "command line" and sources["eval_batch"] == "default"
    assert recorded["regularizer"]["alpha"] == 2e-2 and recorded["regularizer"]["outer"] == "expected"
    assert json.loads((run / "round_01" / "samples.json").read_text())["drawn"] == 6
    assert all(interval_config(tiny).target <= f["latency_ms"] for f in result["front"])
    # a budget below every reachable cost: nothing accepted, no result, and the command says so
    cheap = ["search", "run", "--table", str(tiny["path"]), "--data", str(tiny["npz"]), "--target-ms", "0.0001",
             "--K", "2", "--epochs", "1", "--rounds", "1", "--samples", "6", "-o", str(tmp_path / "cheap"), "--quiet"]
    assert main(cheap) == 1
    assert "no architecture of the last round met the constraint (cost <= 0.0001 ms per batch)" in \
        capsys.readouterr().err
    assert json.loads((tmp_path / "cheap" / "result.json").read_text())["front"] == []
    assert main(args[:-3] + ["--constraint", "budget", "-o", str(tmp_path / "r2")]) == 1  # edges need the interval
    assert "edge_samples (2) need the interval constraint" in capsys.readouterr().err


def test_config_file_settings_are_checked(tmp_path):
    from hwnas.search import read_config

    path = tmp_path / "c.yaml"
    path.write_text("weight_decay: 4e-5\nk: 5\nform: nss\n")  # YAML 1.1 reads 4e-5 as a string
    cfg = SearchConfig.from_dict({**read_config(path), "target": 1.0}, str(path)).check()
    assert cfg.weight_decay == 4e-5 and cfg.k == 5 and cfg.form == "nss"
    with pytest.raises(HwnasError, match="unknown setting.*epoch"):
        SearchConfig.from_dict({"epoch": 3}, "c.yaml")
    with pytest.raises(HwnasError, match="k must be"):
        SearchConfig(target=1.0, k=0).check()


def test_search_takes_a_dataloader(tiny, tmp_path):
    ds = load_npz(tiny["npz"])
    loader = torch.utils.data.DataLoader(ds, batch_size=7)
    search = Search(tiny["table"], loader, tiny_config(tiny), tmp_path / "run")
    assert len(search.train_set) + len(search.held_set) == len(ds)
    with pytest.raises(SystemExit) as exit_:  # neither a dry run nor 'run': a usage error
        main(["search"])
    assert exit_.value.code == 2


class Noisy(torch.utils.data.Dataset):
    """Random transforms drawing from torch's and Python's random state (as torchvision's do)."""

    def __init__(self, base):
        self.base, self.labels = base, base.labels

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return x + 0.1 * torch.randn_like(x) + 0.01 * random.random(), y


def test_loader_workers_change_nothing_but_speed(tiny):
    """Batches read by two DataLoader worker processes, through a Dataset with random transforms:
    the same round, to the bit; and a trainer asked for a later step first (a resume) reads the
    very batch the uninterrupted one read there."""
    ds = Noisy(load_npz(tiny["npz"]))
    slots = tiny["table"].macro().slots(1.0)
    runs = []
    for workers in (0, 2):
        trainer = RoundTrainer(tiny["table"], [[0, 2, 4] for _ in slots], [[] for _ in slots],
                               tiny_config(tiny, workers=workers), ds, ds, 1)
        trainer.run()
        runs.append(trainer)
    assert runs[0].pruned == runs[1].pruned
    for a, b in zip(runs[0].net.state_dict().values(), runs[1].net.state_dict().values()):
        assert torch.equal(a, b)
    assert runs[0].thetas() == runs[1].thetas()
    late = len(runs[1].batches) + 1  # epoch 1, its second batch
    in_order = [runs[0].train_stream(step) for step in range(late + 1)][-1]  # a fresh pass, from step 0
    resumed = runs[1].train_stream(late)  # asked for that step first: a loader started mid-epoch
    assert torch.equal(in_order[0], resumed[0]) and torch.equal(in_order[1], resumed[1])
    batch = list(runs[1].batches.epoch(1))[1]
    assert torch.equal(resumed[1], ds.labels[batch])
    assert not torch.equal(resumed[0], ds.base.images[batch])  # the transforms did run
