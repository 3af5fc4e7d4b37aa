"""The measurement protocol, driven by fake runners whose timings the test controls: scripted per
call, or on a device whose speed follows a function of (virtual) time (fake_backend.Clock)."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from hwnas.profiling import protocol as protocol_module
from hwnas.profiling.protocol import (MIN_ROUNDS, Protocol, Runner, measure_interleaved, measure_referred,
                                     measure_referred_to_precision, median_uncertainty, summarize, time_alone)

from fake_backend import Clock, DriftingRunner

FAST = Protocol(warmup_ms=0.0, warmup_runs=1, min_sample_ms=0.0, rounds=9, cov_threshold=0.05, max_remeasure=2)


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


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch):
    """The protocol never waits for the machine to settle: any sleep fails the test."""
    def refuse(seconds):
        raise AssertionError(f"the protocol paused {seconds} s")

    monkeypatch.setattr(protocol_module.time, "sleep", refuse)


def test_summarize_matches_statistics():
    xs = [3.0, 1.0, 2.0, 10.0]
    s = summarize(xs)
    assert (s.count, s.min, s.median) == (4, 1.0, 2.5)
    assert abs(s.std - statistics.stdev(xs)) < 1e-12 and abs(s.mean - 4.0) < 1e-12
    np = pytest.importorskip("numpy")
    q1, q3 = np.percentile(xs, [25, 75])  # linear interpolation between order statistics
    assert s.iqr == pytest.approx(q3 - q1) and s.iqr == pytest.approx(4.75 - 1.75)  # by hand: 1.75, 4.75
    assert s.spread == pytest.approx((q3 - q1) / 1.349 / 2.5)
    assert s.scaled(2.0).median == 5.0 and s.scaled(2.0).spread == pytest.approx(s.spread)


def test_median_ignores_a_minority_of_bursts():
    # every fourth sample is a 3x burst; the median stays at the quiet value
    runner = Scripted(lambda i: 3.0 if i % 4 == 3 else 1.0)
    stats = measure_interleaved({"a": runner}, FAST, random.Random(0))["a"]
    assert stats.median == 1.0 and stats.mean > 1.0  # the bursts were seen, and ignored


def test_unstable_entry_is_remeasured_and_flagged():
    noisy = Scripted(lambda i: 1.0 + (i % 2))  # 1, 2, 1, 2: unstable forever
    steady = Scripted(lambda i: 5.0)
    stats = measure_interleaved({"noisy": noisy, "steady": steady}, FAST, random.Random(0))
    assert "unstable" in stats["noisy"].flags and "remeasured" in stats["noisy"].flags
    assert stats["steady"].flags == () and stats["steady"].median == 5.0
    assert noisy.calls > steady.calls  # the re-measurements happened


def test_noise_that_settles_keeps_the_steadier_measurement():
    # noisy for its first 12 calls (warm-up + first rounds), steady afterwards
    runner = Scripted(lambda i: (1.0 + (i % 2)) if i < 12 else 1.0)
    stats = measure_interleaved({"x": runner}, FAST, random.Random(0))["x"]
    assert stats.flags == ("remeasured",) and stats.spread == 0.0 and stats.median == 1.0


def drifting(speed, ms):
    """Runners of one device whose speed is speed(t): {name: DriftingRunner(ms)} and the clock."""
    clock = Clock(speed)
    return {k: DriftingRunner(v, clock) for k, v in ms.items()}, clock


TRUE_MS = {"a": 3.0, "b": 7.0, "c": 1.5, "d": 12.0}
REFERENCE_MS = 5.0


def test_drift_slower_than_a_round_cancels_in_the_ratio():
    # The machine slows from 1x to 1.6x over the group (a round lasts ~30 ms, the drift ~1000 ms):
    # as timed, every entry reads its mean slowdown; as a ratio to the reference timed in the same
    # rounds, every entry is its true time over the reference's, whatever the drift.
    speed = lambda t: 1.0 + 0.6 * min(t / 1000.0, 1.0)  # noqa: E731
    runners, clock = drifting(speed, {**TRUE_MS, "ref": REFERENCE_MS})
    ref = runners.pop("ref")
    result = measure_referred(runners, ref, FAST, random.Random(0))
    for key, ms in TRUE_MS.items():
        assert result.ratios[key].median == pytest.approx(ms / REFERENCE_MS, rel=0.01)
        assert result.ratios[key].flags == ()
    # negative control: the same drift, timed as before (no reference), leaves every entry off by it
    runners, clock = drifting(speed, TRUE_MS)
    timed = measure_interleaved(runners, FAST, random.Random(0))
    assert all(timed[k].median / ms > 1.05 for k, ms in TRUE_MS.items())
    # the entries' own samples in the referred run saw it too
    assert result.timed["a"].median / TRUE_MS["a"] > 1.05 and result.reference.median / REFERENCE_MS > 1.05


def test_a_burst_on_the_whole_machine_cancels_without_remeasuring():
    # a 2x burst over about two rounds hits the entries and the reference alike
    runners, clock = drifting(lambda t: 2.0 if 100 <= t < 170 else 1.0, {**TRUE_MS, "ref": REFERENCE_MS})
    ref = runners.pop("ref")
    result = measure_referred(runners, ref, FAST, random.Random(1))
    assert all(s.flags == () for s in result.ratios.values())
    assert all(result.ratios[k].median == pytest.approx(ms / REFERENCE_MS, rel=1e-9) for k, ms in TRUE_MS.items())
    assert max(runners[k].runs for k in runners) == FAST.warmup_runs + FAST.rounds  # no re-measurement
    assert all(result.timed[k].mean > 1.05 * ms for k, ms in TRUE_MS.items())  # the burst was there, as timed


def test_one_slow_reference_sample_triggers_no_remeasurement():
    # the reference's third sample is 2x (a burst that hit it alone): every entry's ratio has one low
    # round; the median ignores it and so does the robust spread, so nothing is re-measured
    ref = Scripted(lambda i: 2 * REFERENCE_MS if i == 6 else REFERENCE_MS)  # call 6: warm-up, 3 primed samples
    runners = {k: Scripted(lambda i, ms=ms: ms) for k, ms in TRUE_MS.items()}
    result = measure_referred(runners, ref, FAST, random.Random(0))
    assert all(s.flags == () for s in result.ratios.values())
    assert all(r.calls == FAST.warmup_runs + FAST.rounds for r in runners.values())
    assert all(s.median == pytest.approx(TRUE_MS[k] / REFERENCE_MS) for k, s in result.ratios.items())
    # negative control: the plain coefficient of variation would have re-measured every entry
    assert all(s.cov > FAST.cov_threshold for s in result.ratios.values())


def test_an_unstable_ratio_is_remeasured_a_bounded_number_of_times_and_flagged():
    # entry 'a' alternates 1x/2x (a burst train faster than a round that the reference escapes)
    runners = {k: Scripted(lambda i, ms=ms: ms) for k, ms in TRUE_MS.items()}
    runners["a"] = Scripted(lambda i: TRUE_MS["a"] * (1 + i % 2))
    ref = Scripted(lambda i: REFERENCE_MS)
    result = measure_referred(runners, ref, FAST, random.Random(0))
    assert result.ratios["a"].flags == ("remeasured", "unstable")
    assert result.timed["a"].flags == ("remeasured", "unstable")
    assert all(result.ratios[k].flags == () for k in "bcd")
    per_attempt = FAST.warmup_runs + FAST.rounds
    assert runners["a"].calls == (1 + FAST.max_remeasure) * per_attempt  # bounded: no more attempts
    assert runners["b"].calls == per_attempt  # the stable ones were not re-timed
    assert ref.calls == (1 + FAST.max_remeasure) * (FAST.warmup_runs + 2 * FAST.rounds)  # primed samples
    assert result.reference.count == (1 + FAST.max_remeasure) * FAST.rounds


def test_the_reference_is_in_every_round_and_primed():
    order: list[str] = []

    class Logger(Runner):
        def __init__(self, name):
            self.name = name

        def run(self, iterations):
            order.append(self.name)
            return 1.0

    runners = {k: Logger(k) for k in "abcd"}
    measure_referred(runners, Logger("ref"), Protocol(warmup_ms=0, warmup_runs=1, min_sample_ms=0, rounds=5),
                     random.Random(1))
    timed = order[5:]  # after one warm-up run each
    rounds = [timed[i:i + 6] for i in range(0, 30, 6)]
    for r in rounds:
        assert sorted(r) == [*"abcd", "ref", "ref"]
        at = r.index("ref")
        assert r[at + 1] == "ref"  # an untimed run right before the timed sample
    assert len({tuple(r) for r in rounds}) > 1  # the order is reshuffled


def test_time_alone_primes_every_sample():
    runner = Scripted(lambda i: 1.0)
    stats = time_alone(runner, FAST, random.Random(0), rounds=4)
    assert stats.count == 4 and runner.calls == FAST.warmup_runs + 2 * 4


def test_precision_decides_the_number_of_calibration_rounds():
    ref = Scripted(lambda i: REFERENCE_MS)
    steady = measure_referred_to_precision({"n": Scripted(lambda i: 40.0)}, ref, FAST, random.Random(0), 0.005, 15,
                                           min_rounds=5)
    assert steady.reference.count == 5 and steady.ratios["n"].flags == ()
    # +-2% noise: more rounds, until the median's standard error is under 0.5%
    rng = random.Random(2)
    noise = [1 + rng.uniform(-0.02, 0.02) for _ in range(100)]
    noisy = measure_referred_to_precision({"n": Scripted(lambda i: 40.0 * noise[i])}, Scripted(lambda i: REFERENCE_MS),
                                          FAST, random.Random(0), 0.005, 15, min_rounds=5)
    rounds = noisy.reference.count
    assert 5 < rounds < 15 and median_uncertainty(noisy.ratios["n"]) <= 0.005
    assert noisy.ratios["n"].flags == ()
    # negative control: +-20% noise never gets there; the bound holds and the network is flagged
    wild = measure_referred_to_precision({"n": Scripted(lambda i: 40.0 * (0.8 + 0.4 * (i * 0.618 % 1)))},
                                         Scripted(lambda i: REFERENCE_MS), FAST, random.Random(0), 0.005, 15)
    assert wild.reference.count == 15 and wild.ratios["n"].flags == ("unstable",)
    assert median_uncertainty(wild.ratios["n"]) > 0.005 and not math.isnan(wild.ratios["n"].median)
