"""The accuracies of many architectures of one supernet, each shared computation done once.

NSE's Pareto retrieval (Ci et al., ICCV 2021, Sec. 3.3) evaluates some two thousand architectures
per round on the supernet's shared weights, each after recalibrating its batch-norm statistics
on training images. `evaluate_all` gives every architecture exactly what the per-architecture
reference (`hwnas.search.retrieval.evaluate`) gives it: every batch norm's statistics set to
the population mean and unbiased variance of its inputs over the calibration images, the
network in training mode (each batch normalised by its own statistics), then the held-out
accuracy in eval mode with those statistics. It runs the same operations on the same tensors
in the same order, so the accuracies are the same to the bit (tests/test_retrieval.py checks
it against the reference on the CPU, in float64 and float32; on a GPU the same convolutions on
the same shapes should choose the same kernels, which no test has run).

What is shared, and why it may be:
- Calibration (training mode). A batch norm in training mode normalises with its own batch's
  statistics; the running statistics being recalibrated are never read. So for a calibration
  batch, the input of layer k depends only on the batch and on the configurations of layers
  0..k-1 (the prefix), and a branch of layer k sees the same input whichever architecture with
  that prefix takes it: its batch norms' population statistics are a function of (prefix,
  branch) alone. A layer's final (population) statistics never feed the next layer's: only the
  held-out pass reads them, so no layer waits for another's statistics to be final, and one
  walk per batch takes every layer's at once.
- Held-out evaluation (eval mode). A branch's output depends on its input and its statistics,
  both functions of the prefix: shared again.
- Architectures are sorted and kept in a trie, one level per layer: a node is a prefix, its
  children the configurations of the next layer its architectures take. At a node every branch
  that some child takes runs once on the node's input (a branch taken by several children is
  computed once), and each child's input to the next layer is the mean of its branches'
  outputs (`cell_mean`, as the cell computes it). The stem runs once per batch. The last
  layer's branches run in calibration for their statistics only: their mean and the head are
  skipped there (the head has no batch norm).

The order of the walk. Per group of architectures (below): for each calibration batch, a
depth-first walk accumulates, per (node, branch), each batch norm's count, sum and sum of squares
(float64, as the reference does); then the statistics are final; then for each held-out batch
a depth-first walk in eval mode counts each leaf's correct predictions. Nothing is cached across
batches but the statistics: a prefix's activations over all calibration images would take
gigabytes per layer at ImageNet sizes, and a walk per batch already computes each (prefix,
branch) once per image, the least there is to compute.

Memory (`memory_mb`, by default half of what the device has free at the start):
- Statistics: those of every (node, branch) of a group are kept from the first calibration batch
  to the last held-out one. Groups are runs of consecutive architectures in trie order (so
  mostly whole subtrees: only the prefix above a group's first branching is computed again per
  group) whose statistics fit a quarter of the budget; at most `group_size` architectures each,
  which also sets the steps of the progress.
- Activations: one batch's, along the path from the root to the node being computed. Per layer
  of the path the walk keeps its input and, while it walks the node's children, the outputs of
  every branch the node ran (each branch runs once per node). That is up to K outputs per layer
  of the path, where one forward pass of the network keeps them for one layer at a time. Where
  the estimate of that peak (from the layers' shapes, `_Walker.peak`) exceeds the rest of the
  budget, the walk keeps less, from the shallowest layers (the largest outputs, and the fewest
  nodes): there it forms each child's input from the child's own branches, run again for each
  child that takes them, and keeps only that input. Same numbers, more computation, memory
  close to a forward pass's.

Not done: architectures are not stacked into one pass in training mode (each architecture's
batch norms normalise with their own batch statistics) nor in eval mode (a batch of images
already makes the convolutions large), nor run through the fused multi-branch layer (its
one-pass statistics round differently from the reference's float64 sums, so the accuracies
would no longer be the reference's to the bit).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from hwnas.model.blocks import cell_mean

Batches = Iterable[tuple[Tensor, Tensor]]
Step = tuple[nn.Conv2d, Any, bool]  # conv, its batch norm, whether a ReLU follows


class Moments:
    """A batch norm's inputs, per channel: count, sum and sum of squares, accumulated in float64;
    `finish` gives their population mean and unbiased variance (the recalibrated statistics).
    `sums`: a (2, channels) float64 tensor of zeros to accumulate in (else one is made at the first
    batch)."""

    def __init__(self, sums: Tensor | None = None) -> None:
        self.n = 0
        self.sums = sums

    def add(self, x: Tensor) -> None:
        self.n += x.numel() // x.shape[1]
        s1 = x.sum(dim=(0, 2, 3), dtype=torch.float64)
        s2 = (x * x).sum(dim=(0, 2, 3), dtype=torch.float64)
        if self.sums is None:
            self.sums = torch.stack([s1, s2])
        else:
            self.sums[0].add_(s1)
            self.sums[1].add_(s2)

    def finish(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        assert self.sums is not None, "no batch was added"
        s1, s2 = self.sums
        mean = s1 / self.n
        var = (s2 - self.n * mean * mean) / max(self.n - 1, 1)
        return mean.to(dtype), var.clamp_min(0).to(dtype)


@dataclass
class Progress:
    """How far `evaluate_all` is: architectures whose accuracy is known, of how many; the best of
    those accuracies; seconds since the start; the time left, estimated from the share of the
    work done (multiply-accumulates of the branches run, and of the head), None until some is done."""

    evaluated: int
    total: int
    best: float | None
    elapsed_s: float
    left_s: float | None


REPORT_EVERY_S = 0.5  # on_progress is called at most this often, and at every group's end
clock = time.perf_counter  # the progress's clock (tests run their own)


class _Meter:
    """The work done against the work planned, reported through on_progress."""

    def __init__(self, on_progress: Callable[[Progress], None] | None, total: int, planned: float):
        self.on_progress, self.total, self.planned = on_progress, total, planned
        self.start = self.last = clock()
        self.done, self.evaluated, self.best = 0.0, 0, -math.inf

    def work(self, amount: float) -> None:
        self.done += amount
        if self.on_progress is not None and clock() - self.last >= REPORT_EVERY_S:
            self.report()

    def finished(self, accuracies: Sequence[float]) -> None:
        self.evaluated += len(accuracies)
        self.best = max(self.best, *accuracies)
        self.report()

    def report(self) -> None:
        if self.on_progress is None:
            return
        self.last = clock()
        elapsed = self.last - self.start
        share = min(self.done / self.planned, 1.0) if self.planned > 0 else 0.0
        left = elapsed * (1 - share) / share if share > 0 else None
        self.on_progress(Progress(self.evaluated, self.total, self.best if self.evaluated else None, elapsed,
                                  0.0 if self.evaluated == self.total else left))


@dataclass
class _Node:
    depth: int
    active: list[int] = field(default_factory=list)  # the branches this node's configuration takes
    children: dict[tuple[bool, ...], _Node] = field(default_factory=dict)
    leaves: list[int] = field(default_factory=list)  # architectures (indices) ending here
    branches: list[int] = field(default_factory=list)  # taken by some child: run at this node
    moments: dict[int, list[Moments]] = field(default_factory=dict)
    stats: dict[int, list[tuple[Tensor, Tensor]]] = field(default_factory=dict)
    right: Tensor | None = None  # a leaf's correct held-out predictions so far


def _key(configs: Sequence[Tensor]) -> tuple[tuple[bool, ...], ...]:
    return tuple(tuple(bool(b) for b in c.tolist()) for c in configs)


def trie_order(configs_list: Sequence[Sequence[Tensor]]) -> list[int]:
    """The architectures' indices in trie order (sorted by configuration, layer by layer): a run
    of consecutive ones shares its prefixes (a data-parallel share keeps its sharing)."""
    keys = [_key(c) for c in configs_list]
    return sorted(range(len(keys)), key=lambda i: keys[i])


def _steps(branch: nn.Module) -> list[Step]:
    return branch.steps()  # type: ignore[operator, no-any-return]


# a branch run at a node on an input; `first`: its first run on this batch (calibration records
# its moments then, and only then)
Branch = Callable[["_Node", int, Tensor, bool], Tensor]


class _Walker:
    """The supernet's layers as (conv, batch norm, ReLU) steps, run functionally: in training
    mode with batch statistics (their moments recorded), in eval mode with given statistics. The
    supernet's own buffers are neither read nor written. `work(macs)` is told of every branch run.
    `budget`: bytes for one batch's activations along a path of the walk (`plan`)."""

    def __init__(self, net: nn.Module, device: torch.device | str, work: Callable[[float], None],
                 budget: float = math.inf):
        self.net, self.device, self.work, self.budget = net, device, work, budget
        self.dtype = next(net.parameters()).dtype
        self.cells: list[Any] = list(net.cells)  # type: ignore[arg-type]
        stem: Any = net.stem
        self.stem: list[Step] = [(stem.conv, stem.bn, True)]
        self.branch_steps = [[_steps(b) for b in cell.branches] for cell in self.cells]
        self.macs = [[_macs(steps, cell.position.resolution) for steps in cell_steps]
                     for cell, cell_steps in zip(self.cells, self.branch_steps)]
        last = self.cells[-1].position if self.cells else None
        head_conv: Any = net.head.conv  # type: ignore[union-attr]
        self.head_macs = float(head_conv.weight.numel()) * (last.out_resolution ** 2 if last else 1)
        # per image, in elements: each layer's input and output, its branches' largest working set
        positions = [cell.position for cell in self.cells]
        self.inputs = [p.cin * p.resolution ** 2 for p in positions]
        self.outputs = [p.cout * p.out_resolution ** 2 for p in positions]
        self.working = [max((_working(steps, p.resolution) for steps in cell_steps), default=0.0)
                        for p, cell_steps in zip(positions, self.branch_steps)]
        side = positions[0].resolution * stem.conv.stride[0] if positions else 1
        self.images = float(stem.conv.in_channels * side ** 2)  # the batch, held by the caller's loop
        self.stem_working = 2.0 * (self.inputs[0] if positions else 0)
        self.hold = [True] * len(self.cells)
        self.stem_moments: list[Moments] = []
        self.stem_stats: list[tuple[Tensor, Tensor]] = []
        self.stats_buffer: Sequence[Tensor] = ()

    # -- the memory of the walk --

    def peak(self, hold: Sequence[bool]) -> float:
        """The most activation elements per image alive at once in a walk that keeps every
        branch output of a node while it walks the node's children at the depths where `hold`
        is true, and elsewhere forms each child's input from its own branches, run again for it
        (computing a layer holds its input, its branches' outputs, their mean and one branch's
        working set). An estimate, from the layers' shapes."""
        above = self.images
        worst = above + self.stem_working
        for d, branches in enumerate(self.branch_steps):
            here = self.inputs[d] + (len(branches) + 2) * self.outputs[d] + self.working[d]
            worst = max(worst, above + here)
            above += self.inputs[d] + (len(branches) * self.outputs[d] if hold[d] else 0)
        return worst

    def plan(self, batch: int) -> list[bool]:
        """At which depths the walk holds the node's branch outputs for a batch of `batch`
        images: everywhere if the activations fit the budget, else not at the shallowest depths
        (the largest outputs, and the fewest nodes to run branches again at) until they fit."""
        hold = [True] * len(self.cells)
        scale = batch * (torch.finfo(self.dtype).bits // 8)
        for d in range(len(hold)):
            if self.peak(hold) * scale <= self.budget:
                break
            hold[d] = False
        return hold

    def runs(self, root: _Node, hold: Sequence[bool], calibration: bool) -> float:
        """Multiply-accumulates per image of a walk (calibration: the last layer's branches once
        per node; held-out: the head once per leaf)."""
        last = len(self.cells) - 1
        total = 0.0
        for node in _nodes(root):
            d = node.depth
            if d > last:
                total += 0.0 if calibration else self.head_macs
            elif hold[d] or (calibration and d == last):
                total += sum(self.macs[d][b] for b in node.branches)
            else:
                total += sum(self.macs[d][b] for child in node.children.values() for b in child.active)
        return total

    # -- one batch through a trie, depth first --

    def walk(self, node: _Node, x: Tensor, branch: Branch, leaf: Callable[[_Node, Tensor], None] | None) -> None:
        """Calibration (`leaf` None): the last layer's branches run for their statistics only.
        Held-out: `leaf` gets each leaf's output of the last layer."""
        d = node.depth
        if d == len(self.cells):
            assert leaf is not None
            leaf(node, x)
            return
        if leaf is None and d + 1 == len(self.cells):
            for b in node.branches:  # the head has no batch norm: these outputs are not needed
                branch(node, b, x, True)
            return
        if self.hold[d]:
            outs = {b: branch(node, b, x, True) for b in node.branches}
            for child in node.children.values():
                self.walk(child, self.child_input(child, x, outs), branch, leaf)
            return
        done: set[int] = set()
        for child in node.children.values():  # memory-light: only the child's input is kept
            mine = {b: branch(node, b, x, b not in done) for b in child.active}
            done.update(child.active)
            y = self.child_input(child, x, mine)
            del mine
            self.walk(child, y, branch, leaf)

    def child_input(self, child: _Node, x: Tensor, outs: dict[int, Tensor]) -> Tensor:
        """The output of the child's layer: the mean of its branches (and identity), as the cell has it."""
        return cell_mean(x, [outs[i] for i in child.active], self.cells[child.depth - 1].identity)

    @staticmethod
    def train_steps(steps: list[Step], x: Tensor, moments: list[Moments] | None) -> Tensor:
        for i, (conv, bn, relu) in enumerate(steps):
            x = conv(x)
            if moments is not None:
                moments[i].add(x)
            x = F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
            if relu:
                x = F.relu(x, inplace=True)
        return x

    @staticmethod
    def eval_steps(steps: list[Step], x: Tensor, stats: list[tuple[Tensor, Tensor]]) -> Tensor:
        for (conv, bn, relu), (mean, var) in zip(steps, stats):
            x = F.batch_norm(conv(x), mean, var, bn.weight, bn.bias, False, 0.0, bn.eps)
            if relu:
                x = F.relu(x, inplace=True)
        return x

    # -- calibration: one batch through the whole trie, in training mode --

    def calibrate(self, root: _Node, x: Tensor) -> None:
        x = self.train_steps(self.stem, x.to(self.device, self.dtype), self.stem_moments)
        self.hold = self.plan(len(x))

        def branch(node: _Node, b: int, x: Tensor, first: bool) -> Tensor:
            self.work(self.macs[node.depth][b] * len(x))
            return self.train_steps(self.branch_steps[node.depth][b], x, node.moments[b] if first else None)

        self.walk(root, x, branch, None)

    def prepare(self, root: _Node) -> None:
        """Fresh moments for the stem and every (node, branch) of a trie, all in one buffer of
        zeros, and one buffer for their statistics: allocated before the walk, not among its
        activations (small tensors left between large freed ones would fragment the heap of
        the CPU allocator, which then grows by gigabytes)."""
        bns = [bn for _, bn, _ in self.stem]
        bns += [bn for node in _nodes(root) for b in node.branches for _, bn, _ in self.branch_steps[node.depth][b]]
        sizes = [bn.num_features for bn in bns]
        sums = torch.zeros(2, sum(sizes), dtype=torch.float64, device=self.device).split(sizes, dim=1)
        self.stats_buffer = torch.empty(2, sum(sizes), dtype=self.dtype, device=self.device).split(sizes, dim=1)
        parts = iter(sums)
        self.stem_moments = [Moments(next(parts)) for _ in self.stem]
        for node in _nodes(root):
            node.moments = {b: [Moments(next(parts)) for _ in self.branch_steps[node.depth][b]] for b in node.branches}

    def finish(self, root: _Node) -> None:
        """Every batch norm's statistics from its moments (all calibration batches seen), in the
        order of `prepare`."""
        buffers = iter(self.stats_buffer)

        def final(m: Moments) -> tuple[Tensor, Tensor]:
            out = next(buffers)
            for o, value in zip(out, m.finish(self.dtype)):
                o.copy_(value)
            return out[0], out[1]

        self.stem_stats = [final(m) for m in self.stem_moments]
        for node in _nodes(root):
            node.stats = {b: [final(m) for m in node.moments[b]] for b in node.branches}
            node.moments = {}

    # -- held-out: one batch through the whole trie, in eval mode; correct predictions per leaf --

    def held_out(self, root: _Node, x: Tensor, y: Tensor) -> None:
        """Adds each leaf's correct predictions on the batch to its `right` (a count on the device:
        no synchronisation per leaf)."""
        x = self.eval_steps(self.stem, x.to(self.device, self.dtype), self.stem_stats)
        y = y.to(self.device)
        self.hold = self.plan(len(x))

        def branch(node: _Node, b: int, x: Tensor, first: bool) -> Tensor:
            self.work(self.macs[node.depth][b] * len(x))
            return self.eval_steps(self.branch_steps[node.depth][b], x, node.stats[b])

        def leaf(node: _Node, x: Tensor) -> None:
            self.work(self.head_macs * len(x))
            right = (self.net.head(x).argmax(1) == y).sum()  # type: ignore[operator]
            node.right = right if node.right is None else node.right + right

        self.walk(root, x, branch, leaf)

    def stats_bytes(self, depth: int, branch: int) -> int:
        """The memory of one branch's statistics while they are gathered and once final."""
        channels = sum(bn.num_features for _, bn, _ in self.branch_steps[depth][branch])
        return channels * (2 * 8 + 2 * torch.finfo(self.dtype).bits // 8)


def _working(steps: list[Step], resolution: int) -> float:
    """Elements per image a branch allocates while it runs, at most, besides its input: a conv's
    output, its square (the moments) and the batch norm's output, with the step's own input
    (the previous step's output)."""
    h = w = resolution
    previous, worst = 0.0, 0.0
    for conv, _, _ in steps:
        h, w = math.ceil(h / conv.stride[0]), math.ceil(w / conv.stride[1])
        out = float(conv.out_channels * h * w)
        worst = max(worst, previous + 2 * out)
        previous = out
    return worst


def _macs(steps: list[Step], resolution: int) -> float:
    """Multiply-accumulates per image of a chain of convs (\"same\" padding) on a square input."""
    h = w = resolution
    macs = 0.0
    for conv, _, _ in steps:
        h, w = math.ceil(h / conv.stride[0]), math.ceil(w / conv.stride[1])
        macs += conv.weight.numel() * h * w
    return macs


def _build(keys: Sequence[tuple[tuple[bool, ...], ...]], indices: Sequence[int]) -> _Node:
    """The trie of the architectures `indices` (their leaves hold their indices)."""
    root = _Node(0)
    for i in indices:
        node = root
        for d, config in enumerate(keys[i]):
            child = node.children.get(config)
            if child is None:
                child = node.children[config] = _Node(d + 1, [j for j, on in enumerate(config) if on])
            node = child
        node.leaves.append(i)
    for node in _nodes(root):
        node.branches = sorted({b for c in node.children.values() for b in c.active})
    return root


def _nodes(root: _Node) -> list[_Node]:
    out, stack = [], [root]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(node.children.values())
    return out


def _groups(keys: Sequence[tuple[tuple[bool, ...], ...]], order: Sequence[int], walker: _Walker,
            group_size: int, memory: float) -> list[list[int]]:
    """Consecutive runs of `order` (trie order) of at most `group_size` architectures whose
    statistics take at most about `memory` bytes (at least one architecture each)."""
    def cost(key: tuple[tuple[bool, ...], ...], below: int) -> int:
        return sum(walker.stats_bytes(d, b) for d in range(below, len(key)) for b, on in enumerate(key[d]) if on)

    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in order:
        key = keys[i]
        added = cost(key, 0)
        if current:
            # in trie order an architecture's longest common prefix with the group is the one
            # with the last: it adds at most the branches it takes below that prefix
            last, shared = keys[current[-1]], 0
            while shared < len(key) and key[shared] == last[shared]:
                shared += 1
            if len(current) < group_size and used + cost(key, shared) <= memory:
                added = cost(key, shared)
            else:
                groups.append(current)
                current, used = [], 0
        current.append(i)
        used += added
    if current:
        groups.append(current)
    return groups


def _images(batches: Batches) -> float:
    """Images per pass, where the loader knows (fixed index batches); else its number of batches."""
    sampler = getattr(batches, "batch_sampler", None)
    if isinstance(sampler, list):
        return float(sum(len(b) for b in sampler))
    try:
        return float(len(batches))  # type: ignore[arg-type]
    except TypeError:
        return 1.0


def _largest_batch(batches: Batches) -> int:
    """The most images of a batch, where the loader knows (else 1: the estimate then plans for
    the walk holding everything)."""
    sampler = getattr(batches, "batch_sampler", None)
    if isinstance(sampler, list) and sampler:
        return max(len(b) for b in sampler)
    return int(getattr(batches, "batch_size", None) or 1)


def available_bytes(device: torch.device | str) -> float:
    """Memory free for the retrieval on `device`: a GPU's free memory (with what torch's caching
    allocator holds unused); on the CPU, the memory the system has available (Linux; else 8 GiB)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return float(free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 8.0 * 2**30


def _plan(net: nn.Module, configs_list: Sequence[Sequence[Tensor]], calibration: Batches, held_out: Batches,
          device: torch.device | str, work: Callable[[float], None], group_size: int | None,
          memory_mb: float | None) -> tuple[_Walker, list[list[int]], list[_Node], float]:
    """The walk of `evaluate_all`: its walker, groups, their tries, and the work planned (the
    multiply-accumulates of every branch and head it will run)."""
    budget = (available_bytes(device) / 2) if memory_mb is None else memory_mb * 2**20
    walker = _Walker(net, device, work, budget * 3 / 4)
    keys = [_key(c) for c in configs_list]
    size = group_size if group_size is not None else max(64, math.ceil(len(configs_list) / 10))
    groups = _groups(keys, trie_order(configs_list), walker, size, budget / 4)
    roots = [_build(keys, g) for g in groups]
    calibration_plan, held_out_plan = (walker.plan(_largest_batch(b)) for b in (calibration, held_out))
    planned = sum(walker.runs(r, calibration_plan, True) * _images(calibration)
                  + walker.runs(r, held_out_plan, False) * _images(held_out) for r in roots)
    return walker, groups, roots, planned


def planned_work(net: nn.Module, configs_list: Sequence[Sequence[Tensor]], calibration: Batches,
                 held_out: Batches, device: torch.device | str = "cpu") -> float:
    """The multiply-accumulates `evaluate_all` will run for these configurations, their shared
    prefixes counted once (nothing is run): with the time of a few, the time of all."""
    if not configs_list:
        return 0.0
    return _plan(net, configs_list, calibration, held_out, device, lambda amount: None, None, None)[3]


@torch.no_grad()
def evaluate_all(net: nn.Module, configs_list: Sequence[Sequence[Tensor]], calibration: Batches, held_out: Batches,
                 device: torch.device | str = "cpu", on_progress: Callable[[Progress], None] | None = None,
                 group_size: int | None = None, memory_mb: float | None = None) -> list[float]:
    """The held-out accuracy of each configuration of the supernet `net` (a `Supernet`) after
    recalibrating its batch norms on the `calibration` batches, in the order given: the
    reference's accuracies (`retrieval.evaluate`), computed once per shared prefix (module
    docstring). `calibration` and `held_out` are iterated once per group and must give the same
    batches each time. `on_progress` gets a `Progress` every REPORT_EVERY_S seconds at most,
    and at the end of every group.
    `group_size`: at most this many architectures per group (default: a tenth of them, at least
    64). `memory_mb`: about the most memory the walk takes on `device` (default: half of what
    is free there at the start), a quarter of it for the batch-norm statistics of a group, the
    rest for one batch's activations along a path (beyond it the walk keeps less and runs some
    branches again)."""
    total = len(configs_list)
    accuracies: list[float] = [0.0] * total
    if not total:
        return accuracies
    meter = _Meter(on_progress, total, 0.0)
    walker, groups, roots, meter.planned = _plan(net, configs_list, calibration, held_out, device, meter.work,
                                                 group_size, memory_mb)
    meter.report()
    for indices, root in zip(groups, roots):
        walker.prepare(root)
        for x, _ in calibration:
            walker.calibrate(root, x)
        walker.finish(root)
        seen = 0
        for x, y in held_out:
            walker.held_out(root, x, y)
            seen += len(y)
        leaves = [node for node in _nodes(root) if node.leaves]
        counts = torch.stack([node.right for node in leaves]).tolist() if seen else [0] * len(leaves)  # type: ignore[misc]
        for node, right in zip(leaves, counts):
            for i in node.leaves:
                accuracies[i] = right / max(seen, 1)
        meter.finished([accuracies[i] for i in indices])
    return accuracies
