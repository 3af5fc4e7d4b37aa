"""The measurement protocol: the one place that decides how a latency is measured.

On a shared, noisy machine a burst of load inflates whatever is being timed at that moment.
The protocol survives it by:
- warm-up by time and by count, then timing back-to-back runs, several per sample for short
  graphs so one sample lasts at least `min_sample_ms` (timer resolution, per-call overhead);
- interleaving (`rounds` of them; `network_rounds` for whole networks, whose samples are
  long enough to average noise by themselves): all entries of a group are timed round-robin in a fresh random order each
  round, so a burst hits one round of every entry, not all rounds of one entry;
- the median over rounds as the statistic (a burst only adds time; the median ignores a
  minority of inflated rounds), with count/min/median/mean/std kept per entry;
- re-measuring entries whose coefficient of variation exceeds `cov_threshold`, keeping the
  steadier set, and flagging those still unstable;
- a probe (a fixed graph) timed alone before and after every group: when its median drifts
  from its baseline by more than `drift_tolerance` the machine's speed changed, and the group
  is measured again after a pause (`drift_wait_s`, doubling), so a table's entries come from
  one machine state and add up (why, and what one busy process does: docs/protocol.md).
- whole networks compared with each other across groups (validation): a reference network timed
  in every group, and each group's latencies referred to one machine state through it
  (`refer_groups`): whole networks drift between groups by more than the op probe shows.
Synchronisation is the runner's job: `Runner.run(n)` returns only when the device is done.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
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
    network_rounds: int = 5  # whole networks (validate, bench) run ~100x longer than one entry
    # Whole networks are compared with each other (rank correlation): a slowdown that entries
    # tolerate (8%) scrambles them, so their groups are re-measured from 3% drift on.
    network_drift_tolerance: float = 0.03
    statistic: str = "median"
    cov_threshold: float = 0.05
    max_remeasure: int = 2
    drift_tolerance: float = 0.08
    max_group_retries: int = 3
    drift_wait_s: float = 5.0  # wait before a retry, doubled each time: let a burst of load pass
    # Calibration: random networks timed whole, their mean branches per cell evenly spaced from
    # max to min (sparse networks time in a fraction of a supernet-density one's time; the
    # ratio measured / summed does not depend on density, and the build checks that it does not:
    # ratios further apart than calibration_tolerance are flagged).
    calibration_architectures: int = 4
    calibration_max_branches: float = 3.0
    calibration_min_branches: float = 1.0
    calibration_tolerance: float = 0.03

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Protocol:
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Stats:
    """Latency of one entry in milliseconds, per run (one batch)."""

    count: int
    min: float
    median: float
    mean: float
    std: float
    flags: tuple[str, ...] = field(default=())

    @property
    def cov(self) -> float:
        return self.std / self.mean if self.mean > 0 else 0.0

    def value(self, statistic: str) -> float:
        return float(getattr(self, statistic))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.count, "min": round(self.min, 6), "median": round(self.median, 6),
                               "mean": round(self.mean, 6), "std": round(self.std, 6), "cov": round(self.cov, 5)}
        if self.flags:
            out["flags"] = list(self.flags)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Stats:
        return cls(int(raw["count"]), float(raw["min"]), float(raw["median"]), float(raw["mean"]),
                   float(raw["std"]), tuple(raw.get("flags", ())))


def summarize(samples: list[float], flags: tuple[str, ...] = ()) -> Stats:
    if not samples:
        raise ValueError("no samples")
    std = statistics.stdev(samples) if len(samples) > 1 else 0.0
    return Stats(len(samples), min(samples), statistics.median(samples), statistics.fmean(samples), std, flags)


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


def sample_rounds(runners: Mapping[str, Runner], protocol: Protocol, rounds: int, rng: random.Random,
                  tick: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Warm up, then `rounds` interleaved rounds: one sample per runner per round, shuffled order."""
    per_sample = {key: runs_per_sample(warm_up(r, protocol), protocol) for key, r in runners.items()}
    samples: dict[str, list[float]] = {key: [] for key in runners}
    keys = list(runners)
    for _ in range(rounds):
        rng.shuffle(keys)
        for key in keys:
            n = per_sample[key]
            samples[key].append(runners[key].run(n) / n)
        if tick:
            tick()
    return samples


def measure_interleaved(runners: Mapping[str, Runner], protocol: Protocol, rng: random.Random,
                        tick: Callable[[], None] | None = None) -> dict[str, Stats]:
    """Interleaved rounds, then re-measure unstable entries (keeping the steadier sample set)."""
    samples = sample_rounds(runners, protocol, protocol.rounds, rng, tick)
    stats = {key: summarize(s) for key, s in samples.items()}
    for _ in range(protocol.max_remeasure):
        unstable = {k: runners[k] for k, s in stats.items() if s.cov > protocol.cov_threshold}
        if not unstable:
            break
        again = sample_rounds(unstable, protocol, protocol.rounds, rng)
        for key, redo in again.items():
            fresh = summarize(redo)
            kept = fresh if fresh.cov < stats[key].cov else stats[key]
            stats[key] = replace(kept, flags=("remeasured",))
    for key, s in stats.items():
        if s.cov > protocol.cov_threshold:
            stats[key] = replace(s, flags=(*s.flags, "unstable"))
    return stats


PROBE = "__probe__"


@dataclass(frozen=True)
class GroupResult:
    stats: dict[str, Stats]
    drift: float  # probe median during the group / probe baseline


def measure_group(runners: Mapping[str, Runner], probe: Runner, baseline_ms: float, protocol: Protocol,
                  rng: random.Random, tick: Callable[[], None] | None = None) -> GroupResult:
    """Measure a group interleaved; re-measure it (after a pause) while the machine is slowed.

    The probe is timed alone right before and right after the group, as its baseline was:
    inside the group its time would depend on which entries ran before it (cold caches after
    large tensors), not only on the machine's load. The attempt whose probe was closest to
    its baseline is kept; its entries are flagged 'drift' if even that one is off.
    """
    best: GroupResult | None = None
    for attempt in range(1 + protocol.max_group_retries):
        if attempt:
            time.sleep(protocol.drift_wait_s * 2 ** (attempt - 1))
        before = probe_check(probe, protocol, rng) / baseline_ms
        stats = measure_interleaved(runners, protocol, rng, tick)
        after = probe_check(probe, protocol, rng) / baseline_ms
        drift = max(before, after, key=lambda d: abs(math.log(d)))
        if best is None or abs(math.log(drift)) < abs(math.log(best.drift)):
            best = GroupResult(stats, drift)
        if abs(drift - 1.0) <= protocol.drift_tolerance:
            break
    assert best is not None
    if abs(best.drift - 1.0) > protocol.drift_tolerance:
        best = GroupResult({k: replace(s, flags=(*s.flags, "drift")) for k, s in best.stats.items()}, best.drift)
    return best


def probe_check(probe: Runner, protocol: Protocol, rng: random.Random) -> float:
    """The probe's median over a few rounds, alone and warm (like its baseline)."""
    return measure_interleaved({PROBE: probe}, replace(protocol, rounds=5, max_remeasure=0), rng)[PROBE].median


def probe_baseline(probe: Runner, protocol: Protocol, rng: random.Random) -> Stats:
    """The probe's latency before any group: the reference for the drift check."""
    return measure_interleaved({PROBE: probe}, protocol, rng)[PROBE]


def refer_groups(group_of: list[int], reference_ms: list[float]) -> list[float]:
    """Per-measurement factors that refer every group to one machine state.

    `reference_ms[g]` is the reference network's latency timed in group g (interleaved with
    that group's entries); measurement i was taken in group `group_of[i]`. Its factor is the
    reference's median over all groups / its latency in that group: a ratio to a baseline
    timed in the same rounds, brought back to milliseconds at the run's typical state.
    """
    level = statistics.median(reference_ms)
    return [level / reference_ms[g] for g in group_of]
