"""The NSE search loop and its run folder (Ci et al., "Evolving Search Space for Neural
Architecture Search", ICCV 2021): train the supernet on the current subset, retrieve the Pareto
front, aggregate and replenish, until a layer's pool runs out or the rounds are spent.

A run is a folder:
    config.json          every setting, the table's and data's identity (+ the user's config file, copied)
    checkpoint.pt        weights, optimiser states, thetas, round state, RNG states (the last one)
    log.jsonl            one JSON object per step / event: losses, E[cost], pruned ops
    round_NN/            subset.json, thetas.json, samples.json, front.json, front.png (matplotlib)
    final/               the last front as architecture files, and front.json
    result.json          a summary
Only rank 0 writes (a data-parallel run has one writer), and one process at a time: rank 0 holds
the folder's lock (<folder>.lock beside it) for the whole run. Everything that can refuse a run (data,
settings, sizes, the folder, the checkpoint to resume) is checked before the folder is made; a
run that fails before its first checkpoint removes what it made.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hwnas import files
from hwnas.errors import HwnasError
from hwnas.profiling.cpu_allocator import keep_freed_memory
from hwnas.profiling.predict import predict
from hwnas.progress import progress_bar
from hwnas.profiling.table import Table
from hwnas.search.config import SearchConfig
from hwnas.search.config import setting_sources as sources_of
from hwnas.search.constraint import DRAWS_PER_SAMPLE, Constraint, Drawn, constrained_front, draw, previous_front
from hwnas.search.data import check_sizes, checked_data, fixed_batches, split_held_out, step_seed
from hwnas.search.distributed import join, lost_peer
from hwnas.search.estimate import TIMED_SMALL, RoundEstimate, StepTimer, retrieval_seconds
from hwnas.search.evolution import Evolution, aggregate
from hwnas.search.evaluation import Progress, evaluate_all, planned_work, trie_order
from hwnas.search.retrieval import Candidate, Sampler, configs_of
from hwnas.search.training import RoundTrainer, penalty_constants
from hwnas.spaces.arch import Architecture, Cell, architecture_from_dict
from hwnas.supernet.global_bn import set_world

# version 2: each epoch's order comes from torch's DistributedSampler (version 1's order differs)
CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "hwnas-search-checkpoint", 2
RETRIEVAL, ESTIMATE = 3, 4  # tags of the retrieval's and the round estimate's generators
# the retrieval's progress is logged this often (and at its end): a line at least every 10 s while
# the engine reports twice a second or more (hwnas.search.evaluation.REPORT_EVERY_S)
LOG_EVERY_S = 9.0


def table_digest(table: Table) -> str:
    return hashlib.sha256(json.dumps(table.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def architecture(table: Table, ops: list[list[int]], name: str) -> Architecture:
    """The architecture of per-layer op lists, in hwnas's spec format (checked by its parser)."""
    space, macro, scale = table.space(), table.macro(), float(table.meta["scale"])
    cells = [Cell(s.position.cell_type, tuple(sorted(o))) for s, o in zip(macro.slots(scale), ops)]
    raw = {"space": space.name, "macro": macro.name, "scale": scale,
           "cells": [{"type": c.type, "ops": list(c.ops)} for c in cells]}
    return architecture_from_dict(name, raw, name, {space.name: space}, {macro.name: macro})


class Log:
    """JSON lines (and TensorBoard scalars when it is installed); silent off rank 0."""

    def __init__(self, folder: Path | None):
        self.path = folder / "log.jsonl" if folder else None
        self.board: Any = None
        if folder is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.board = SummaryWriter(str(folder / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.board = None

    def write(self, record: dict[str, Any], global_step: int | None = None) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.board is not None and global_step is not None:
            for key in ("loss", "ce", "penalty", "expected_cost"):
                if key in record:
                    self.board.add_scalar(f"round_{record.get('round', 0):02d}/{key}", record[key], global_step)

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


def accuracy_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def seconds_text(value: float | None) -> str:
    """Seconds as h:mm:ss or m:ss ("?" when unknown)."""
    if value is None:
        return "?"
    minutes, seconds = divmod(int(round(value)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def plot_round(path: Path, candidates: list[Candidate], front: list[Candidate], constraint: Constraint, unit: str,
               title: str) -> bool:
    """Cost against accuracy: samples, edge samples, the previous front, this front. False when
    matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, colour in (("sample", "tab:blue"), ("edge", "tab:orange"), ("previous", "tab:green")):
        pts = [(c.cost, c.accuracy) for c in candidates if c.kind == kind]
        if pts:
            costs, accs = zip(*pts)
            ax.scatter(costs, accs, s=10, alpha=0.6, color=colour, label=kind)
    if front:
        ax.plot([c.cost for c in front], [float(c.accuracy or 0.0) for c in front], "k.-", label="Pareto front")
    ax.axvline(constraint.target, color="red", linestyle="--", linewidth=1, label="target")
    if constraint.mode == "interval":
        ax.axvspan(constraint.target, constraint.upper, color="red", alpha=0.08, label="interval")
    ax.set_xlabel(f"table cost ({unit})")
    ax.set_ylabel("held-out accuracy (supernet weights)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return True


@dataclass
class SearchResult:
    run_dir: Path
    rounds: int
    front: list[dict[str, Any]]
    stopped: str
    main: bool = True  # False on the other ranks of a data-parallel run
    constraint: str = ""  # the constraint the front satisfies, in words

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "rounds": self.rounds, "front": self.front, "stopped": self.stopped}


class Search:
    """NSE's loop over rounds. `data`: any torch Dataset (or DataLoader) of (image (C, H, W), label);
    the held-out split is carved from it unless `held_out` is given."""

    def __init__(self, table: Table, data: Any, cfg: SearchConfig, run_dir: str | Path, held_out: Any = None,
                 device: str | torch.device | None = None, progress: bool = True,
                 config_source: str | Path | None = None, sources: dict[str, Any] | None = None,
                 setting_sources: dict[str, str] | None = None):
        self.sources = sources_of(cfg, setting_sources)  # before check() resolves the derived settings
        self.table, self.cfg = table, cfg.check()
        self.constraint = Constraint.of(self.cfg)
        self.space, self.macro = table.space(), table.macro()
        if cfg.metric == "latency" and not table.has_latency:
            raise HwnasError("the table holds no latency (backend 'none'): search for MACs (metric macs) or use a "
                             "profiled table")
        dataset, shape = checked_data(data, self.macro)  # hwnas.search.checks: refused or adapted
        self.train_set: Any
        self.held_set: Any
        if held_out is None:
            self.train_set, self.held_set = split_held_out(dataset, cfg.held_out, cfg.seed)
        else:
            self.train_set, self.held_set = dataset, checked_data(held_out, self.macro)[0]
        self.run_dir = check_run_folder(run_dir)
        self.group = join(device)  # under torchrun: this rank's place in the data-parallel run
        check_sizes(len(self.train_set), len(self.held_set), cfg.batch, self.group.world)
        self.device = self.group.device
        # CPU training allocates the same large activations every step: keep them in the process
        # rather than have glibc map and unmap them (hwnas.profiling.cpu_allocator)
        self.allocator = keep_freed_memory() if self.device.type == "cpu" else None
        self.progress, self.main = progress, self.group.main
        self.identity = {"table": {"space": table.meta.get("space"), "macro": table.meta.get("macro"),
                                   "digest": table_digest(table)},
                         "data": {"train": len(self.train_set), "held_out": len(self.held_set),
                                  "channels": shape.channels, "resolution": shape.resolution,
                                  "classes": shape.classes}, **(sources or {})}
        self.config_source = Path(config_source) if config_source else None
        self._log = Log(None)  # the run's, from run()
        self.config_bytes = files.read_bytes(self.config_source, "config file") if self.config_source else None
        self._made: Path | set[str] | None = None  # the first folder this run made, or the folder's old entries
        self.stop_after: int | None = None  # tests: raise KeyboardInterrupt after this many weight steps
        self.last_draw: dict[str, int] = {}  # the last retrieval's counts (drawn, accepted, edge, previous)
        self.last_retrieval: tuple[int, float] | None = None  # its candidates and seconds per candidate
        self._steps_done = 0

    # -- files -----------------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def _write_json(self, rel: str, data: Any) -> None:
        if self.main:
            files.write_json(self.run_dir / rel, data)

    def _start_folder(self, resume: bool, lock: contextlib.ExitStack) -> dict[str, Any] | None:
        """Rank 0 takes the folder's lock and checks the folder (its refusal stops every rank); a
        fresh run's folder is made. Resuming: the checkpoint, read on rank 0 and handed to every
        rank (no shared file system needed)."""
        def start() -> dict[str, Any] | None:
            # the first folder of the path that does not exist yet (the lock makes the folder's parent)
            top = next((f for f in reversed([self.run_dir, *self.run_dir.parents]) if not f.exists()), None)
            lock.enter_context(files.exclusive(self.run_dir, "run folder"))
            # from here on, what this run makes goes again if it stops before its first checkpoint
            self._made = top if top is not None else set(os.listdir(self.run_dir))
            return self._check_folder(resume)

        state = self.group.from_main(start)
        if state is not None:
            torch.set_rng_state(state["rng"]["torch"])
            random.setstate(state["rng"]["python"])
        return state

    def _check_folder(self, resume: bool) -> dict[str, Any] | None:
        if resume:
            if not self.checkpoint_path.exists():
                raise HwnasError(f"{self.run_dir} holds no checkpoint to resume: start a run without --resume")
            recorded = files.read_json(self.run_dir / "config.json", "run configuration")
            if recorded.get("config") != self.cfg.to_dict():
                diff = sorted(k for k in self.cfg.to_dict() if recorded.get("config", {}).get(k) != getattr(self.cfg, k))
                raise HwnasError(f"--resume with other settings than the run's ({', '.join(diff)}): resume with the "
                                 f"same settings (the run's are in {self.run_dir / 'config.json'})")
            if recorded.get("identity", {}).get("table") != self.identity["table"]:
                raise HwnasError(f"--resume with another table than the run's ({recorded['identity']['table']})")
            if recorded.get("identity", {}).get("data") != self.identity["data"]:
                raise HwnasError(f"--resume with other data than the run's ({recorded['identity']['data']})")
            return self._read_checkpoint()
        if self.checkpoint_path.exists():
            raise HwnasError(f"{self.run_dir} already holds a run: continue it with --resume, or choose another folder")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "log.jsonl").unlink(missing_ok=True)  # a killed run's, before its first checkpoint
        record: dict[str, Any] = {"config": self.cfg.to_dict(), "identity": self.identity, **self._settings_record()}
        if self.config_source is not None and self.config_bytes is not None:
            copy = self.run_dir / f"config.source{self.config_source.suffix}"
            files.write_bytes(copy, self.config_bytes)
            record["config_file"] = str(self.config_source)
        self._write_json("config.json", record)
        return None

    def _discard(self) -> None:
        """A run that stops before its first checkpoint leaves nothing: what it made goes (the
        folders its lock made too, where a --resume was refused)."""
        if not self.main or self._made is None or self.checkpoint_path.exists():
            return
        if isinstance(self._made, Path):
            shutil.rmtree(self._made, ignore_errors=True)
        else:
            for name in set(os.listdir(self.run_dir)) - self._made:
                path = self.run_dir / name
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        # what an interrupted command says it kept
        files.WRITTEN[:] = [p for p in files.WRITTEN if not Path(p).is_relative_to(self.run_dir)]
        files.INTERRUPT_NOTES[:] = ["the search stopped before its first checkpoint, so nothing of it was kept"]

    def _settings_record(self) -> dict[str, Any]:
        """For config.json: each setting's source, the constraint, and the regularizer as it runs."""
        cfg = self.cfg
        alpha, beta = penalty_constants(cfg)
        return {"sources": self.sources, "constraint": self.constraint.to_dict(),
                "regularizer": {"form": cfg.form, "outer": cfg.outer, "alpha_scaling": cfg.alpha_scaling,
                                "alpha": alpha, "beta": beta, "tau": cfg.target}}

    def _save(self, state: dict[str, Any]) -> None:
        if not self.main:
            return
        state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state,
                 "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}}
        with files.atomic_path(self.checkpoint_path) as tmp:
            torch.save(state, tmp)

    def _read_checkpoint(self) -> dict[str, Any]:
        try:
            state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        except Exception as exc:  # a truncated or foreign file
            raise HwnasError(f"cannot read the checkpoint {self.checkpoint_path}: {exc}") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise HwnasError(f"{self.checkpoint_path} is not an hwnas search checkpoint")
        if state.get("version") != CHECKPOINT_VERSION:
            raise HwnasError(f"{self.checkpoint_path} is a version {state.get('version')} search checkpoint; this hwnas "
                             f"continues version {CHECKPOINT_VERSION} (it orders the data differently): finish the "
                             f"run with the hwnas that started it, or start it anew in another folder")
        if state.get("done"):
            state["result"] = files.read_json(self.run_dir / "result.json", "search result")
        return state

    # -- the loop --------------------------------------------------------------------------------

    def run(self, resume: bool = False) -> SearchResult:
        log: Log | None = None
        lock = contextlib.ExitStack()  # the run folder's, held by rank 0 until the run ends
        try:
            try:
                state = self._start_folder(resume, lock)
                log = self._log = Log(self.run_dir if self.main else None)
                files.on_interrupt(f"continue the search with --resume (from {self.checkpoint_path})")
                return self._loop(state, log)
            except RuntimeError as exc:
                if not (self.group.parallel and lost_peer(exc)):
                    raise
                # gloo's "[.../pair.cc:537] Read error [addr]: Connection reset by peer. This is ..." -> its first sentence
                first = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).strip()).split(". ")[0][:200] or type(exc).__name__
                raise HwnasError(f"rank {self.group.rank}: another process of this data-parallel run stopped "
                                 f"({first}); its own message says why. Continue the run with --resume (from "
                                 f"{self.checkpoint_path})") from None
        except BaseException:
            if log is not None:
                log.close()
                log = None
            self._discard()
            raise
        finally:
            if log is not None:
                log.close()
            self.group.close()
            lock.close()

    def _loop(self, state: dict[str, Any] | None, log: Log) -> SearchResult:
        """A fresh run (state None) or the resumed run of a checkpoint's state."""
        cfg = self.cfg
        if state is not None:
            if state.get("done"):
                done = state["result"]
                return SearchResult(self.run_dir, done["rounds"], done["front"], done["stopped"], self.main,
                                    self._constraint_words())
            evo = Evolution.from_dict(state["evolution"])
            round_index, previous = state["round"], [Candidate(**c) for c in state["previous_front"]]
            history = state["history"]
            trainer = (RoundTrainer.from_state(state["trainer"], self.table, cfg, self.train_set, self.held_set,
                                               self.group) if state["trainer"] else None)
            log.write({"event": "resumed", "round": round_index, "step": trainer.step if trainer else 0})
        else:
            assert cfg.k is not None  # check() resolved it
            evo = Evolution.start(len(self.macro.slots(float(self.table.meta["scale"]))), len(self.space.ops), cfg.k,
                                  cfg.seed)
            round_index, previous, history, trainer = 1, [], [], None
        stopped = "rounds"
        while True:
            if trainer is None:
                trainer = RoundTrainer(self.table, evo.subsets, evo.locked, cfg, self.train_set, self.held_set,
                                       round_index, self.group)
                self._write_json(f"round_{round_index:02d}/subset.json",
                                 {"round": round_index, "layers": evo.subsets, "locked": evo.locked,
                                  "ops": [[self.space.ops[i].name for i in s] for s in evo.subsets]})
            started = time.perf_counter()
            self._train(trainer, evo, round_index, previous, history, log)
            retrieving = time.perf_counter()
            front, candidates = self._retrieve(trainer, previous, round_index)
            retrieval_s = time.perf_counter() - retrieving
            self.last_retrieval = (len(candidates), retrieval_s / max(len(candidates), 1))
            seconds = time.perf_counter() - started
            self._write_round(trainer, round_index, candidates, front)
            summary = {"round": round_index, "seconds": round(seconds, 2), "retrieval_seconds": round(retrieval_s, 2),
                       "steps": trainer.total_steps,
                       "front": [c.to_dict() for c in front], "evaluated": len(candidates), **self.last_draw,
                       "pruned": trainer.pruned, "layer": trainer.layer_path(),  # fused or eager, and why
                       "allocator": self.allocator}
            history.append(summary)
            log.write({"event": "round", **{k: v for k, v in summary.items() if k != "front"},
                       "front": [[c.cost, c.accuracy] for c in front]})
            # the front holds only architectures within the constraint: only their ops are inherited and locked
            inherited = aggregate([c.ops for c in front], len(evo.subsets))
            if round_index >= cfg.rounds:
                break
            if not evo.replenish(inherited):
                stopped = "pool"  # NSE's end: a layer's pool cannot refill its subset
                break
            round_index, previous, trainer = round_index + 1, front, None
            self._save({"round": round_index, "evolution": evo.to_dict(), "previous_front": [c.to_dict() for c in previous],
                        "history": history, "trainer": None})
        result = self._finish(front, round_index, stopped, history)
        self._save({"round": round_index, "evolution": evo.to_dict(), "previous_front": [c.to_dict() for c in front],
                    "history": history, "trainer": None, "done": True})
        return result

    def _train(self, trainer: RoundTrainer, evo: Evolution, round_index: int, previous: list[Candidate],
               history: list[Any], log: Log) -> None:
        def save() -> None:
            self._save({"round": round_index, "evolution": evo.to_dict(),
                        "previous_front": [c.to_dict() for c in previous], "history": history,
                        "trainer": trainer.state_dict()})

        timer: StepTimer | None = StepTimer()  # the round's first steps give its estimate
        with progress_bar(trainer.total_steps, f"round {round_index}", unit="step", enabled=self.progress and self.main,
                          initial=trainer.step, leave=False) as bar:
            while trainer.step < trainer.total_steps:
                stepping = time.perf_counter()
                record = trainer.train_step()
                if timer is not None:
                    timer.add(time.perf_counter() - stepping, "ce" in record)
                    if timer.ready:
                        self._estimate(trainer, round_index, previous, timer, log, bar)
                        timer = None
                record["round"] = round_index
                log.write(record, global_step=trainer.step)
                bar.update(1)
                if "expected_cost" in record:
                    bar.set_postfix(loss=f"{record['loss']:.3f}", cost=f"{record['expected_cost']:.3g}")
                if trainer.step % self.cfg.checkpoint_every == 0 or trainer.step == trainer.total_steps:
                    save()
                self._steps_done += 1
                if self.stop_after is not None and self._steps_done >= self.stop_after:
                    raise KeyboardInterrupt

    def _estimate(self, trainer: RoundTrainer, round_index: int, previous: list[Candidate], timer: StepTimer,
                  log: Log, bar: Any) -> None:
        """Print and log how long the rest of the round will take: its steps at the pace of its first
        ones; its retrieval at the last round's pace and count, or (first round, or after a resume)
        one evaluation timed now and the most candidates it can have."""
        cfg = self.cfg
        if self.last_retrieval is not None:
            candidates, per = self.last_retrieval
        else:
            candidates = cfg.samples + int(cfg.edge_samples or 0) + len(previous)
            per = self._time_evaluation(trainer, round_index, candidates)
        est = RoundEstimate(round_index, trainer.total_steps - trainer.step,
                            trainer.total_theta_steps - trainer.theta_steps, timer.weight_step_s, timer.theta_step_s,
                            candidates, per, self.last_retrieval is not None)
        log.write({"event": "estimate", **est.to_dict()})
        if self.progress and self.main:
            bar.write(est.describe(), file=sys.stderr)

    def _time_evaluation(self, trainer: RoundTrainer, round_index: int, count: int) -> float:
        """Seconds per candidate of a retrieval of `count` architectures drawn from P(theta) now,
        evaluated as the retrieval evaluates them (BN recalibration and held-out accuracy): the
        first one, then the first TIMED_SMALL, are timed, and a fixed cost plus a cost per
        multiply-accumulate fitted to the two is applied to the work of all of them, shared
        prefixes counted once (`planned_work`, which runs nothing). The search's random states
        are left as they were."""
        cfg = self.cfg
        with torch.random.fork_rng(devices=[]):
            sampler = Sampler(trainer.fitness, trainer.costs, trainer.layer_ops)
            gen = torch.Generator().manual_seed(step_seed(cfg.seed, round_index, ESTIMATE))
            drawn = sampler.sample(count, lambda cost: True, "sample", gen, DRAWS_PER_SAMPLE * count)
            configs: list[Any] = [configs_of(c.ops, trainer.layer_ops) for c in drawn]
            seed = step_seed(cfg.seed, round_index, ESTIMATE, 1)
            calibration = fixed_batches(self.train_set, min(cfg.bn_images, len(self.train_set)), cfg.eval_batch, seed)
            held_out = fixed_batches(self.held_set, cfg.eval_images, cfg.eval_batch, seed)
            set_world(trainer.net, 1)  # as in the retrieval: one rank's evaluation
            try:
                timed = []  # (work, seconds) of the first one and of the first few
                for n in sorted({1, min(TIMED_SMALL, len(configs))}):
                    started = time.perf_counter()
                    evaluate_all(trainer.net, configs[:n], calibration, held_out, self.device)
                    seconds = time.perf_counter() - started
                    timed.append((planned_work(trainer.net, configs[:n], calibration, held_out, self.device),
                                  seconds))
                work_all = planned_work(trainer.net, configs, calibration, held_out, self.device)
            finally:
                set_world(trainer.net, trainer.bn_world)
                trainer.net.train()
        return retrieval_seconds(timed, work_all) / max(len(configs), 1)

    def _candidates(self, trainer: RoundTrainer, previous: list[Candidate], round_index: int) -> Drawn:
        """The round's candidates: D architectures drawn from P(theta), those within the constraint
        kept, edge samples (interval), and the previous front within the constraint."""
        cfg = self.cfg
        sampler = Sampler(trainer.fitness, trainer.costs, trainer.layer_ops)
        gen = torch.Generator().manual_seed(step_seed(cfg.seed, round_index, RETRIEVAL))
        drawn = draw(sampler, self.constraint, cfg.samples, int(cfg.edge_samples or 0), gen)
        previous_front(drawn, sampler, previous, self.constraint, trainer.layer_ops)  # lock and rehearse
        self.last_draw = drawn.summary()
        return drawn

    def _retrieve(self, trainer: RoundTrainer, previous: list[Candidate],
                  round_index: int) -> tuple[list[Candidate], list[Candidate]]:
        """The round's front within the constraint, and every candidate evaluated."""
        candidates = self._candidates(trainer, previous, round_index).candidates
        self._evaluate(trainer, candidates, round_index)
        return constrained_front(candidates, self.constraint), candidates

    def _evaluate(self, trainer: RoundTrainer, candidates: list[Candidate], round_index: int) -> None:
        """Every candidate's held-out accuracy after recalibrating its batch norms, all at once
        (hwnas.search.evaluation). Each rank evaluates a share, consecutive in trie order (its
        architectures share prefixes); all get every accuracy. The log gets the progress every
        LOG_EVERY_S seconds, the progress bar the same numbers."""
        cfg = self.cfg
        seed = step_seed(cfg.seed, round_index, RETRIEVAL, 1)
        bn_count = min(cfg.bn_images, len(self.train_set))
        # every candidate is recalibrated and evaluated on the same images: their loaders, once
        calibration = fixed_batches(self.train_set, bn_count, cfg.eval_batch, seed, cfg.workers)
        held_out = fixed_batches(self.held_set, cfg.eval_images, cfg.eval_batch, seed, cfg.workers)
        configs: list[Any] = [configs_of(c.ops, trainer.layer_ops) for c in candidates]
        assert all(c is not None for c in configs)
        mine = self.group.share(trie_order(configs))
        share = {"share": [self.group.rank + 1, self.group.world]} if self.group.parallel else {}
        what = f"round {round_index} evaluate" + (f" (share 1 of {self.group.world})" if self.group.parallel else "")
        logged = [-math.inf]
        set_world(trainer.net, 1)  # each evaluation is one rank's: its batch norms' statistics are its own
        try:
            with progress_bar(len(mine), what, unit="arch", enabled=self.progress and self.main, leave=False,
                              own_eta=True) as bar:
                def show(p: Progress) -> None:  # the bar shows what the log records
                    left = None if p.left_s is None else round(p.left_s, 1)
                    record = {"event": "retrieval", "round": round_index, "evaluated": p.evaluated,
                              "total": p.total, "best_accuracy": p.best, "elapsed_s": round(p.elapsed_s, 1),
                              "left_s": left, **share}
                    bar.update(p.evaluated - bar.n)
                    bar.set_postfix(best=accuracy_text(p.best), left=seconds_text(left))
                    if p.elapsed_s - logged[0] >= LOG_EVERY_S or p.evaluated == p.total:
                        logged[0] = p.elapsed_s
                        self._log.write(record)

                accuracies = evaluate_all(trainer.net, [configs[i] for i in mine], calibration, held_out,
                                          self.device, show)
        finally:
            set_world(trainer.net, trainer.bn_world)
        for i, acc in self.group.gather(list(zip(mine, accuracies))):
            candidates[i].accuracy = acc

    def _write_round(self, trainer: RoundTrainer, round_index: int, candidates: list[Candidate],
                     front: list[Candidate]) -> None:
        folder = f"round_{round_index:02d}"
        self._write_json(f"{folder}/thetas.json", {"round": round_index, "layers": trainer.layer_ops,
                                                   "thetas": trainer.thetas(), "pruned": trainer.pruned})
        self._write_json(f"{folder}/samples.json", {"round": round_index, "target": self.cfg.target,
                                                    "metric": self.cfg.metric, "constraint": self.constraint.to_dict(),
                                                    **self.last_draw, "samples": [c.to_dict() for c in candidates]})
        self._write_json(f"{folder}/front.json", {"round": round_index, "front": [c.to_dict() for c in front]})
        if self.main:
            plot_round(self.run_dir / folder / "front.png", candidates, front, self.constraint,
                       self._unit(), f"round {round_index}")

    def _finish(self, front: list[Candidate], rounds: int, stopped: str, history: list[Any]) -> SearchResult:
        """The last front (within the constraint: nothing else reaches it), as architecture files with
        their table prices. Empty when no architecture of the last round met the constraint."""
        out = []
        for i, cand in enumerate(front, 1):
            name = f"searched_{i:02d}"
            arch = architecture(self.table, cand.ops, name)
            price = predict(self.table, arch)
            info = {"arch": name, "file": f"final/{name}.json", "latency_ms": price.get("latency_ms"),
                    "macs": price["macs"], "params": price["params"], "supernet_accuracy": cand.accuracy,
                    "cost": cand.cost, "kind": cand.kind}
            doc = {"about": (f"Searched by hwnas (NSE evolution, {rounds} rounds) for {self.cfg.metric} target "
                             f"{self.cfg.target}: predicted latency {price.get('latency_ms')} ms per batch of "
                             f"{self.table.meta.get('batch')}, {price['macs']} MACs, {price['params']} params, "
                             f"supernet held-out accuracy {cand.accuracy}"), **arch.document()}
            self._write_json(info["file"], doc)
            out.append(info)
        summary = {"rounds": rounds, "stopped": stopped, "target": self.cfg.target, "metric": self.cfg.metric,
                   "constraint": self.constraint.to_dict(), "front": out, "history": history}
        self._write_json("final/front.json", out)
        self._write_json("result.json", summary)
        return SearchResult(self.run_dir, rounds, out, stopped, self.main, self._constraint_words())

    def _constraint_words(self) -> str:
        return self.constraint.describe(self._unit())

    def _unit(self) -> str:
        return "ms per batch" if self.cfg.metric == "latency" else "M MACs"


def check_run_folder(path: str | Path) -> Path:
    """A run folder's path, refused (before anything is made) where it cannot be one: a file, or
    under a file."""
    folder = Path(path)
    if str(path) == "":
        raise HwnasError(f"run folder {str(path)!r} is not a folder name: give a path such as runs/search1")
    for f in (folder, *folder.parents):
        if f.exists() and not f.is_dir():
            raise HwnasError(f"cannot make the run folder {folder}: {f} is a file" + (", not a folder" if f != folder else
                                                                                       "; choose another path"))
    return folder


def search(table: Table, data: Any, cfg: SearchConfig, run_dir: str | Path, **kwargs: Any) -> SearchResult:
    """Run (or with resume=True continue) an NSE search; see `Search`."""
    resume = kwargs.pop("resume", False)
    return Search(table, data, cfg, run_dir, **kwargs).run(resume=resume)
