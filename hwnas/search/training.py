"""One NSE round's supernet training (Ci et al., ICCV 2021, Sec. 3.1-3.2).

Weights: every branch Bernoulli(0.5) per step (identity always on in normal cells), Nesterov
SGD, cosine learning rate after a linear warm-up. Fitness indicators: one Adam step every
`theta_every` weight steps on held-out data, through the simulated gradient of two sampled
configurations plus the table-driven resource regularizer. Simplification: at the end of every
epoch (or every `simplify_every` theta steps), branches whose theta fell below the threshold are
dropped, except inherited ones (lock and rehearse) and the last branch of an R/E cell.

Every random draw of a step comes from a generator seeded by (seed, round, step), and the data
order by (seed, round, epoch): a run resumed from a checkpoint repeats the steps it lost exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from hwnas.profiling.table import Table
from hwnas.search.config import SearchConfig
from hwnas.search.data import BatchStream, ShardedBatches, step_seed
from hwnas.search.distributed import Group
from hwnas.spaces.arch import Space
from hwnas.spaces.macro import Macro
from hwnas.supernet.costs import cost_model
from hwnas.supernet.fitness import FitnessIndicators
from hwnas.supernet.global_bn import set_world
from hwnas.supernet.network import Supernet, theta_step, weight_step
from hwnas.supernet.regularizer import ResourceRegularizer, constants
from hwnas.supernet.search import theta_lr_factor
from hwnas.supernet.simplify import simplify_layer

WEIGHTS, THETA = 1, 2  # tags of the per-step generators


def penalty_constants(cfg: SearchConfig) -> tuple[float, float]:
    """The regularizer's alpha and beta: those set, else NSE's; for the nse form NSE's alpha as
    `alpha_scaling` says (relative: alpha_NSE * (tau_NSE / tau) ** beta, so that the penalty weighs
    as much against the cross-entropy at any target's scale; fixed: NSE's constant)."""
    return constants(cfg.metric, cfg.form, cfg.target, cfg.alpha, cfg.beta, cfg.alpha_scaling)


class RoundTrainer:
    """The supernet, fitness indicators and optimisers of one round, and its training steps."""

    def __init__(self, table: Table, layer_ops: Sequence[Sequence[int]], locked: Sequence[Sequence[int]],
                 cfg: SearchConfig, train_set: Any, held_set: Any, round_index: int, group: Group | None = None):
        self.table, self.cfg, self.round = table, cfg, round_index
        self.group = group or Group()
        self.space: Space = table.space()
        self.macro: Macro = table.macro()
        self.scale = float(table.meta["scale"])
        self.locked = [list(x) for x in locked]
        self.train_set, self.held_set = train_set, held_set
        self.device = self.group.device
        rank, world = self.group.rank, self.group.world
        self.batches = ShardedBatches(len(train_set), cfg.batch, step_seed(cfg.seed, round_index, WEIGHTS), rank, world)
        # theta's batches: as large as the weights', at most the held-out split (a multiple of the world)
        self.held_batches = ShardedBatches(len(held_set), min(cfg.batch, len(held_set) - len(held_set) % world) or world,
                                           step_seed(cfg.seed, round_index, THETA), rank, world)
        self.total_steps = cfg.epochs * len(self.batches)
        self.step = 0  # weight steps done
        self.theta_steps = 0
        self.pruned: list[dict[str, Any]] = []
        with torch.random.fork_rng(devices=[]):  # weights re-initialised every round, from the seed
            torch.manual_seed(step_seed(cfg.seed, round_index))
            self._build([list(o) for o in layer_ops])
        self.weight_opt = self._weight_optimizer()
        self.theta_opt = self._theta_optimizer()
        pin = self.device.type == "cuda"
        self.train_stream = BatchStream(self.batches, train_set, cfg.workers, pin)
        self.held_stream = BatchStream(self.held_batches, held_set, cfg.workers, pin)

    # -- structure -------------------------------------------------------------------------------

    def _build(self, layer_ops: list[list[int]]) -> None:
        fused = self.cfg.fused or self.device.type == "cuda"
        self.net = Supernet(self.space, self.macro, self.scale, layer_ops, fused=fused).to(self.device)
        set_world(self.net, self.bn_world)
        self.model = self._wrap()
        needs = [c.needs_branch for c in self.cells]
        # theta stays on the CPU (a few numbers; its configurations are drawn there): its 0-dim
        # probabilities combine with device tensors in the simulated gradient
        self.fitness = FitnessIndicators([len(o) for o in layer_ops], needs)
        self._pricing()

    def _pricing(self) -> None:
        self.costs = cost_model(self.table, [(c.position, c.ops) for c in self.cells], self.cfg.metric,
                                stem_and_head=True)  # priced as `hwnas predict` prices (latency calibrated)
        alpha, beta = penalty_constants(self.cfg)
        self.regularizer = ResourceRegularizer(self.costs, self.cfg.target, self.cfg.form, alpha, beta,
                                               outer=self.cfg.outer)

    @property
    def bn_world(self) -> int:
        """The ranks whose batch shares a training batch norm's statistics cover: all of them
        (sync_bn, as one process on the global batch), or its own."""
        return self.group.world if self.cfg.sync_bn else 1

    def _wrap(self) -> nn.Module:
        """What trains the weights: DDP in a data-parallel run. With batch norms on each rank's
        share, DDP sends rank 0's running statistics to the others every step, as by default."""
        return self.group.wrap(self.net, sync_buffers=not self.cfg.sync_bn)

    def layer_path(self) -> dict[str, Any]:
        """What computed the supernet's cells: the fused layer's kernels, or the eager PyTorch
        path, and why (HWNAS_FUSED and the kernels' first-use check: hwnas.selfcheck.fallback)."""
        if not self.net.fused:
            return {"path": "eager", "reason": "the fused layer runs on GPUs, and on the CPU with fused: true"}
        from hwnas.selfcheck.fallback import decide

        return decide(self.device, self.dtype).to_dict()

    @property
    def cells(self) -> list[Any]:
        return list(self.net.cells)

    @property
    def layer_ops(self) -> list[list[int]]:
        return [list(c.ops) for c in self.cells]

    def _weight_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        return torch.optim.SGD(self.net.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)

    def _theta_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.fitness.parameters(), lr=self.cfg.theta_lr, betas=(0.9, self.cfg.theta_beta2))

    # -- schedules -------------------------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        warm = self.cfg.warmup_epochs * len(self.batches)
        if step < warm:
            return self.cfg.lr * (step + 1) / warm
        span = max(1.0, self.total_steps - warm)
        return 0.5 * self.cfg.lr * (1 + math.cos(math.pi * (step - warm) / span))

    @property
    def total_theta_steps(self) -> int:
        return self.total_steps // self.cfg.theta_every

    # -- data ------------------------------------------------------------------------------------

    def _batch(self, stream: BatchStream, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = stream(step)
        return x.to(self.device, self.dtype, non_blocking=True), y.to(self.device, non_blocking=True)

    @property
    def dtype(self) -> torch.dtype:
        """The supernet's (images are cast to it: a float64 supernet takes float64 images)."""
        return next(self.net.parameters()).dtype

    # -- steps -----------------------------------------------------------------------------------

    def train_step(self) -> dict[str, Any]:
        """One weight step, and a theta step every `theta_every`; a simplification at an epoch's end."""
        cfg, step = self.cfg, self.step
        for group in self.weight_opt.param_groups:
            group["lr"] = self.lr_at(step)
        x, y = self._batch(self.train_stream, step)
        gen = torch.Generator().manual_seed(step_seed(cfg.seed, self.round, step, WEIGHTS))
        loss = weight_step(self.net, self.weight_opt, x, y, gen, self.model)
        record: dict[str, Any] = {"step": step + 1, "loss": self.group.mean(loss)}  # the global batch's
        self.step += 1
        if self.step % cfg.theta_every == 0:
            record.update(self.fitness_step())
        end_of_epoch = self.step % len(self.batches) == 0
        due = (self.theta_steps % cfg.simplify_every == 0 and "ce" in record) if cfg.simplify_every else end_of_epoch
        if due:
            pruned = self.simplify()
            if pruned:
                record["pruned"] = pruned
        return record

    def fitness_step(self) -> dict[str, float]:
        cfg, t = self.cfg, self.theta_steps
        for group in self.theta_opt.param_groups:
            group["lr"] = cfg.theta_lr * (theta_lr_factor(t, self.total_theta_steps)
                                          if cfg.theta_schedule == "cosine" else 1.0)
        x, y = self._batch(self.held_stream, t)
        gen = torch.Generator().manual_seed(step_seed(cfg.seed, self.round, t, THETA))
        self.net.train()
        ce, penalty = theta_step(self.net, self.fitness, self.regularizer, self.theta_opt, x, y, gen,
                                 self.group.average_gradients)
        self.theta_steps += 1
        expected = self.regularizer.expected_cost(self.fitness)
        return {"ce": self.group.mean(ce), "penalty": penalty, "expected_cost": expected}

    # -- simplification (lock and rehearse) ------------------------------------------------------

    def simplify(self) -> list[dict[str, Any]]:
        """Drop the branches whose theta fell below the threshold (not inherited ones, not the last
        of an R/E cell); the optimisers keep the state of what stays. Decided on rank 0, the
        same on every rank."""
        keep_index, pruned = self.group.from_main(self._pruning)
        if not pruned:
            return []
        old_weight_state = {p: self.weight_opt.state[p] for p in self.net.parameters() if p in self.weight_opt.state}
        old_thetas = list(self.fitness.thetas)
        old_theta_state = [self.theta_opt.state.get(t, {}) for t in old_thetas]
        for cell, keep in zip(self.cells, keep_index):
            if len(keep) != len(cell.branches):
                cell.branches = nn.ModuleList(cell.branches[j] for j in keep)
                cell.ops = tuple(cell.ops[j] for j in keep)
        with torch.no_grad():
            self.fitness.thetas = nn.ParameterList(nn.Parameter(t.detach()[keep].clone())
                                                   for t, keep in zip(old_thetas, keep_index))
        self.weight_opt = self._weight_optimizer()
        for p in self.net.parameters():
            if p in old_weight_state:
                self.weight_opt.state[p] = old_weight_state[p]
        self.theta_opt = self._theta_optimizer()
        for t, state, keep in zip(self.fitness.thetas, old_theta_state, keep_index):
            if state:
                self.theta_opt.state[t] = {k: (v[keep].clone() if isinstance(v, torch.Tensor) and v.ndim else v)
                                           for k, v in state.items()}
        self._pricing()
        self.model = self._wrap()  # DDP anew: the set of parameters changed
        self.pruned.extend(pruned)
        return pruned

    def _pruning(self) -> tuple[list[list[int]], list[dict[str, Any]]]:
        """Per layer the indices of the branches to keep, and the ops dropped."""
        pruned = []
        keep_index: list[list[int]] = []
        for i, (cell, theta) in enumerate(zip(self.cells, self.fitness.thetas)):
            kept = simplify_layer(cell.ops, theta.detach().cpu(), cell.needs_branch, self.locked[i], self.cfg.threshold)
            keep_index.append([cell.ops.index(op) for op in kept])
            gone = [op for op in cell.ops if op not in kept]
            if gone:
                pruned.append({"layer": i, "ops": gone})
        return keep_index, pruned

    # -- checkpoint ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"round": self.round, "step": self.step, "theta_steps": self.theta_steps, "layer_ops": self.layer_ops,
                "locked": self.locked, "net": self.net.state_dict(), "fitness": self.fitness.state_dict(),
                "weight_opt": self.weight_opt.state_dict(), "theta_opt": self.theta_opt.state_dict(),
                "pruned": self.pruned}

    @classmethod
    def from_state(cls, state: dict[str, Any], table: Table, cfg: SearchConfig, train_set: Any, held_set: Any,
                   group: Group | None = None) -> RoundTrainer:
        trainer = cls(table, state["layer_ops"], state["locked"], cfg, train_set, held_set, state["round"], group)
        trainer.net.load_state_dict(state["net"])
        trainer.fitness.load_state_dict(state["fitness"])
        trainer.weight_opt.load_state_dict(state["weight_opt"])
        trainer.theta_opt.load_state_dict(state["theta_opt"])
        trainer.step, trainer.theta_steps = state["step"], state["theta_steps"]
        trainer.pruned = list(state["pruned"])
        return trainer

    def thetas(self) -> list[list[float]]:
        return [[float(v) for v in t.detach().cpu()] for t in self.fitness.thetas]

    def run(self, on_step: Callable[[dict[str, Any]], None] | None = None) -> None:
        while self.step < self.total_steps:
            record = self.train_step()
            if on_step is not None:
                on_step(record)
