"""The measurement protocol: the one place that decides how a latency is measured.

On a shared, noisy machine the speed of everything moves: slowly (other jobs, clocks, the host
of a virtual machine; 10-20% within tens of minutes) and in bursts. The protocol survives both by:
- warm-up by time and by count, then timing back-to-back runs, several per sample for short
  graphs so one sample lasts at least `min_sample_ms` (timer resolution, per-call overhead);
- interleaving: all graphs of a group are timed round-robin in a fresh random order each round
  (`rounds`; `network_rounds` for whole networks), so a burst hits one round of every graph,
  not all rounds of one;
- ratios to a reference graph timed in every round of every group (`measure_referred`): a
  graph's value is the median over rounds of its time divided by the reference's time in the
  same round. A change of speed slower than a round scales both alike and cancels; a table
  brings the ratios back to milliseconds with the reference's level (hwnas.profiling.reference),
  so all its entries, its calibration and its checks refer to one machine state;
- the median over rounds as the statistic (a burst only adds time; the median ignores a
  minority of inflated rounds);
- a bounded re-measurement of graphs whose ratio is itself unstable (its robust coefficient of
  variation over `cov_threshold`: a burst that hit the graph and not the reference), keeping the
  steadier set and flagging those still unstable. There are no pauses: nothing waits for the
  machine to settle.
Why, and what it cannot fix: docs/protocol.md. Synchronisation is the runner's job:
`Runner.run(n)` returns only when the device is done.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any


class Runner(ABC):
    """A loaded graph, ready to run on its backend with its inputs already in place."""

    @abstractmethod
    def run(self, iterations: int) -> float:
        """Run `iterations` times back to back; the elapsed milliseconds, device synchronised."""

    def close(self) -> None:
        """Free the graph's resources."""


class CallRunner(Runner):
    """A Python callable as a Runner (the benchmarks' variants). `synchronize` (for instance
    torch.cuda.synchronize) runs before and after the timed calls, for work queued on a device."""

    def __init__(self, fn: Callable[[], Any], synchronize: Callable[[], Any] | None = None):
        self.fn, self.synchronize = fn, synchronize

    def run(self, iterations: int) -> float:
        if self.synchronize is not None:
            self.synchronize()
        start = time.perf_counter()
        for _ in range(iterations):
            self.fn()
        if self.synchronize is not None:
            self.synchronize()
        return (time.perf_counter() - start) * 1e3


@dataclass(frozen=True)
class Protocol:
    warmup_ms: float = 150.0
    warmup_runs: int = 2
    min_sample_ms: float = 5.0
    rounds: int = 15
    network_rounds: int = 5  # whole networks (validate) run ~100x longer than one entry
    statistic: str = "median"
    # An entry whose ratio to the reference has a robust coefficient of variation (its
    # interquartile range / 1.349 / median) over this is re-measured, at most max_remeasure
    # times, then flagged unstable.
    cov_threshold: float = 0.05
    max_remeasure: int = 2
    # Calibration: random networks timed whole, their mean branches per cell evenly spaced from
    # max to min (sparse networks time in a fraction of a supernet-density one's time; the
    # ratio measured / summed does not depend on density, and the build checks that it does not:
    # ratios further apart than calibration_tolerance are flagged).
    calibration_architectures: int = 4
    calibration_max_branches: float = 3.0
    calibration_min_branches: float = 1.0
    calibration_tolerance: float = 0.03
    # Rounds of the calibration networks: until every network's ratio is known to
    # calibration_precision (the standard error of its median; a sixth of the tolerance, so that
    # the density check does not flag noise), from network_rounds up to calibration_max_rounds.
    calibration_precision: float = 0.005
    calibration_max_rounds: int = 15

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Protocol:
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})


MIN_ROUNDS = 3  # a median and a spread need three samples
IQR_PER_SD = 1.349  # the interquartile range of a normal distribution, in standard deviations
SE_OF_MEDIAN = 1.2533  # the median's standard error, in standard errors of the mean (normal samples)


def _sig(x: float) -> float:
    """Seven significant digits: ratios and sub-millisecond entries keep their precision."""
    return float(f"{x:.7g}")


@dataclass(frozen=True)
class Stats:
    """One graph's samples: milliseconds per run (one batch), or ratios to the reference."""

    count: int
    min: float
    median: float
    mean: float
    std: float
    flags: tuple[str, ...] = field(default=())
    iqr: float | None = None  # interquartile range (absent in tables of format 1)

    @property
    def cov(self) -> float:
        return self.std / self.mean if self.mean > 0 else 0.0

    @property
    def spread(self) -> float:
        """Robust coefficient of variation, IQR / 1.349 / median: a few outlier rounds (up to a
        quarter on either side) do not move it, as they do not move the median, but samples split
        between two levels do; the plain coefficient where the IQR is not known."""
        if self.iqr is None:
            return self.cov
        return self.iqr / IQR_PER_SD / self.median if self.median > 0 else 0.0

    def value(self, statistic: str) -> float:
        return float(getattr(self, statistic))

    def scaled(self, factor: float) -> Stats:
        """The same samples times `factor` (a ratio to the reference brought to milliseconds)."""
        return Stats(self.count, self.min * factor, self.median * factor, self.mean * factor, self.std * factor,
                     self.flags, None if self.iqr is None else self.iqr * factor)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.count, "min": _sig(self.min), "median": _sig(self.median),
                               "mean": _sig(self.mean), "std": _sig(self.std), "cov": round(self.cov, 5)}
        if self.iqr is not None:
            out["iqr"] = _sig(self.iqr)
        if self.flags:
            out["flags"] = list(self.flags)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Stats:
        iqr = raw.get("iqr")
        return cls(int(raw["count"]), float(raw["min"]), float(raw["median"]), float(raw["mean"]),
                   float(raw["std"]), tuple(raw.get("flags", ())), None if iqr is None else float(iqr))


def summarize(samples: list[float], flags: tuple[str, ...] = ()) -> Stats:
    if not samples:
        raise ValueError("no samples")
    std = statistics.stdev(samples) if len(samples) > 1 else 0.0
    if len(samples) > 1:
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    else:
        q1 = q3 = samples[0]
    return Stats(len(samples), min(samples), statistics.median(samples), statistics.fmean(samples), std, flags,
                 q3 - q1)


def median_uncertainty(stats: Stats) -> float:
    """The relative standard error of a median (robust spread, normal approximation)."""
    return SE_OF_MEDIAN * stats.spread / math.sqrt(stats.count)


def warm_up(runner: Runner, protocol: Protocol) -> float:
    """Run until warm (time and count); returns the last single-run time in ms."""
    elapsed, runs, last = 0.0, 0, 0.0
    while runs < protocol.warmup_runs or elapsed < protocol.warmup_ms:
        last = runner.run(1)
        elapsed += last
        runs += 1
    return last


def runs_per_sample(single_run_ms: float, protocol: Protocol) -> int:
    return max(1, math.ceil(protocol.min_sample_ms / max(single_run_ms, 1e-6)))


def interleaved_rounds(runners: Mapping[str, Runner], protocol: Protocol, rng: random.Random,
                       primed: Collection[str] = ()) -> Iterator[dict[str, float]]:
    """Warm up, then one interleaved round per step: {key: ms per run}, in a fresh random order.

    A runner in `primed` runs once, untimed, before each of its samples: the reference is timed
    warm, as when it is timed alone, whatever graph ran before it (cold caches after large
    tensors would otherwise make its time depend on the group it is timed in)."""
    per_sample = {key: runs_per_sample(warm_up(r, protocol), protocol) for key, r in runners.items()}
    keys = list(runners)
    while True:
        rng.shuffle(keys)
        row = {}
        for key in keys:
            if key in primed:
                runners[key].run(1)
            n = per_sample[key]
            row[key] = runners[key].run(n) / n
        yield row


def sample_rounds(runners: Mapping[str, Runner], protocol: Protocol, rounds: int, rng: random.Random,
                  tick: Callable[[], None] | None = None, primed: Collection[str] = ()) -> dict[str, list[float]]:
    """Warm up, then `rounds` interleaved rounds: one sample per runner per round, shuffled order."""
    samples: dict[str, list[float]] = {key: [] for key in runners}
    steps = interleaved_rounds(runners, protocol, rng, primed)
    for _ in range(rounds):
        for key, ms in next(steps).items():
            samples[key].append(ms)
        if tick:
            tick()
    return samples


def _remeasure(first: dict[str, list[float]], protocol: Protocol,
               again: Callable[[list[str]], dict[str, list[float]]]) -> tuple[dict[str, Stats], dict[str, int]]:
    """Re-measure the unstable entries (at most max_remeasure times), keep each one's steadier
    sample set, flag those re-measured and those still unstable. `again(keys)` times those keys
    once more and returns their new samples. Also returns which attempt each key kept (0: first)."""
    stats = {k: summarize(s) for k, s in first.items()}
    kept = dict.fromkeys(first, 0)
    for attempt in range(1, protocol.max_remeasure + 1):
        unstable = [k for k, s in stats.items() if s.spread > protocol.cov_threshold]
        if not unstable:
            break
        for key, redo in again(unstable).items():
            fresh = summarize(redo)
            if fresh.spread < stats[key].spread:
                stats[key], kept[key] = fresh, attempt
            stats[key] = replace(stats[key], flags=("remeasured",))
    for key, s in stats.items():
        if s.spread > protocol.cov_threshold:
            stats[key] = replace(s, flags=(*s.flags, "unstable"))
    return stats, kept


def measure_interleaved(runners: Mapping[str, Runner], protocol: Protocol, rng: random.Random,
                        tick: Callable[[], None] | None = None) -> dict[str, Stats]:
    """Interleaved rounds as timed (no reference), then re-measure unstable entries (benchmarks that
    compare variants timed together, where every variant sees the same machine)."""
    samples = sample_rounds(runners, protocol, protocol.rounds, rng, tick)
    return _remeasure(samples, protocol,
                      lambda keys: sample_rounds({k: runners[k] for k in keys}, protocol, protocol.rounds, rng))[0]


REFERENCE = "__reference__"


@dataclass(frozen=True)
class Referred:
    """A group measured against the reference: each graph's ratios (its time / the reference's
    time in the same round) and its times as timed; the reference's own times in the group."""

    ratios: dict[str, Stats]
    timed: dict[str, Stats]
    reference: Stats


def measure_referred(runners: Mapping[str, Runner], reference: Runner, protocol: Protocol, rng: random.Random,
                     tick: Callable[[], None] | None = None, rounds: int | None = None) -> Referred:
    """Time `runners` interleaved with the reference in every round; ratios per round, their median.

    Graphs whose ratio is unstable are timed again with the reference (bounded: max_remeasure
    times `rounds` more rounds, no pause). The reference's stats cover all its samples."""
    rounds = rounds or protocol.rounds
    attempts: list[dict[str, list[float]]] = []  # the graphs' samples as timed, per attempt
    reference_ms: list[float] = []

    def ratios(keys: Collection[str], tick: Callable[[], None] | None = None) -> dict[str, list[float]]:
        timed = sample_rounds({**{k: runners[k] for k in keys}, REFERENCE: reference}, protocol, rounds, rng, tick,
                              primed={REFERENCE})
        ref = timed.pop(REFERENCE)
        reference_ms.extend(ref)
        attempts.append(timed)
        return {k: [t / r for t, r in zip(s, ref)] for k, s in timed.items()}

    stats, kept = _remeasure(ratios(list(runners), tick), protocol, ratios)
    timed = {k: replace(summarize(attempts[kept[k]][k]), flags=stats[k].flags) for k in runners}
    return Referred(stats, timed, summarize(reference_ms))


def time_alone(runner: Runner, protocol: Protocol, rng: random.Random, rounds: int | None = None) -> Stats:
    """A graph timed by itself, primed before every sample as the reference is in a group."""
    return summarize(sample_rounds({REFERENCE: runner}, protocol, rounds or protocol.rounds, rng,
                                   primed={REFERENCE})[REFERENCE])


def measure_referred_to_precision(runners: Mapping[str, Runner], reference: Runner, protocol: Protocol,
                                  rng: random.Random, precision: float, max_rounds: int,
                                  tick: Callable[[], None] | None = None, min_rounds: int = MIN_ROUNDS) -> Referred:
    """Like `measure_referred`, but round after round until every graph's median ratio is known to
    `precision` (its relative standard error), from `min_rounds` to `max_rounds` rounds: the time
    spent is what that precision needs. Graphs that do not get there are flagged 'unstable'."""
    steps = interleaved_rounds({**runners, REFERENCE: reference}, protocol, rng, primed={REFERENCE})
    timed: dict[str, list[float]] = {k: [] for k in runners}
    reference_ms: list[float] = []
    min_rounds = max(min_rounds, MIN_ROUNDS)
    for n in range(1, max(max_rounds, min_rounds) + 1):
        row = next(steps)
        reference_ms.append(row[REFERENCE])
        for k in runners:
            timed[k].append(row[k])
        if tick:
            tick()
        ratios = {k: summarize([t / r for t, r in zip(s, reference_ms)]) for k, s in timed.items()}
        if n >= min_rounds and all(median_uncertainty(s) <= precision for s in ratios.values()):
            break
    flags = {k: ("unstable",) if median_uncertainty(s) > precision else () for k, s in ratios.items()}
    return Referred({k: replace(s, flags=flags[k]) for k, s in ratios.items()},
                    {k: summarize(s, flags[k]) for k, s in timed.items()}, summarize(reference_ms))
