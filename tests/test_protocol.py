"""The measurement protocol, driven by fake runners whose timings the test controls."""

from __future__ import annotations

import random
import statistics

import pytest

from hwnas.profiling.protocol import (Protocol, Runner, measure_group, measure_interleaved, refer_groups,
                                     summarize)

FAST = Protocol(warmup_ms=0.0, warmup_runs=1, min_sample_ms=0.0, rounds=9, cov_threshold=0.05, max_remeasure=2,
                drift_tolerance=0.08, max_group_retries=2, drift_wait_s=0.0)


class Scripted(Runner):
    """Returns per-run times from a function of how many runs it has made."""

    def __init__(self, time_of_call):
        self.calls = 0
        self.time_of_call = time_of_call

    def run(self, iterations: int) -> float:
        total = 0.0
        for _ in range(iterations):
            total += self.time_of_call(self.calls)
            self.calls += 1
        return total


def test_summarize_matches_statistics():
    xs = [3.0, 1.0, 2.0, 10.0]
    s = summarize(xs)
    assert (s.count, s.min, s.median) == (4, 1.0, 2.5)
    assert abs(s.std - statistics.stdev(xs)) < 1e-12 and abs(s.mean - 4.0) < 1e-12


def test_median_ignores_a_minority_of_bursts():
    # every fourth sample is a 3x burst; the median stays at the quiet value
    runner = Scripted(lambda i: 3.0 if i % 4 == 3 else 1.0)
    stats = measure_interleaved({"a": runner}, FAST, random.Random(0))["a"]
    assert stats.median == 1.0 and stats.mean > 1.0  # the bursts were seen, and ignored


def test_unstable_entry_is_remeasured_and_flagged():
    noisy = Scripted(lambda i: 1.0 + (i % 2))  # 1, 2, 1, 2: cov ~ 0.35 forever
    steady = Scripted(lambda i: 5.0)
    stats = measure_interleaved({"noisy": noisy, "steady": steady}, FAST, random.Random(0))
    assert "unstable" in stats["noisy"].flags and "remeasured" in stats["noisy"].flags
    assert stats["steady"].flags == () and stats["steady"].median == 5.0
    assert noisy.calls > steady.calls  # the re-measurements happened


def test_noise_that_settles_keeps_the_steadier_measurement():
    # noisy for its first 12 calls (warm-up + first rounds), steady afterwards
    runner = Scripted(lambda i: (1.0 + (i % 2)) if i < 12 else 1.0)
    stats = measure_interleaved({"x": runner}, FAST, random.Random(0))["x"]
    assert stats.flags == ("remeasured",) and stats.cov == 0.0 and stats.median == 1.0


def test_group_is_remeasured_while_the_machine_is_slow():
    # The machine is 2x slower for the first 10 calls (one attempt) of every runner: the first attempt of the
    # group sees the probe drift, the retry sees a quiet machine.
    def slow_then_quiet(base):
        return lambda i: base * (2.0 if i < 10 else 1.0)

    probe = Scripted(slow_then_quiet(1.0))
    runners = {"a": Scripted(slow_then_quiet(3.0)), "b": Scripted(slow_then_quiet(7.0))}
    result = measure_group(runners, probe, baseline_ms=1.0, protocol=FAST, rng=random.Random(0))
    assert abs(result.drift - 1.0) <= FAST.drift_tolerance
    assert result.stats["a"].median == 3.0 and result.stats["b"].median == 7.0
    assert all("drift" not in s.flags for s in result.stats.values())


def test_drift_that_never_settles_is_flagged():
    probe = Scripted(lambda i: 1.5)
    result = measure_group({"a": Scripted(lambda i: 2.0)}, probe, 1.0, FAST, random.Random(0))
    assert result.drift == 1.5 and "drift" in result.stats["a"].flags


def test_interleaving_visits_every_entry_each_round():
    order: list[str] = []

    class Logger(Runner):
        def __init__(self, name):
            self.name = name

        def run(self, iterations):
            order.append(self.name)
            return 1.0

    runners = {k: Logger(k) for k in "abcd"}
    measure_interleaved(runners, Protocol(warmup_ms=0, warmup_runs=1, min_sample_ms=0, rounds=5), random.Random(1))
    timed = order[4:]  # after one warm-up run each
    rounds = [timed[i:i + 4] for i in range(0, 20, 4)]
    assert all(sorted(r) == list("abcd") for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # the order is reshuffled


def test_reference_network_refers_groups_to_one_state():
    # Three groups of two networks, each group run in a sustained machine state (x1.00, x1.08,
    # x0.95) that the op probe does not see. As timed, the groups' states scramble the ranks;
    # referred through the reference network timed in each group, every network comes back to
    # its own latency at the run's median state, ranks restored.
    true = [[10.0, 12.0], [10.5, 11.0], [11.5, 12.5]]
    states = [1.00, 1.08, 0.95]
    reference_true = 20.0
    probe = Scripted(lambda i: 1.0)
    timed, reference_ms = [], []
    for latencies, state in zip(true, states):
        runners = {str(k): Scripted(lambda i, t=t * state: t) for k, t in enumerate(latencies)}
        runners["ref"] = Scripted(lambda i, t=reference_true * state: t)
        result = measure_group(runners, probe, 1.0, FAST, random.Random(0))
        assert result.drift == 1.0  # the probe saw nothing
        timed += [result.stats[str(k)].median for k in range(len(latencies))]
        reference_ms.append(result.stats["ref"].median)
    flat = [t for group in true for t in group]
    rank = lambda xs: sorted(range(len(xs)), key=xs.__getitem__)  # noqa: E731
    assert rank(timed) != rank(flat)
    referred = [m * f for m, f in zip(timed, refer_groups([0, 0, 1, 1, 2, 2], reference_ms))]
    assert referred == [pytest.approx(t * statistics.median(states)) for t in flat]
    assert rank(referred) == rank(flat)
