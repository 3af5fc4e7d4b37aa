"""How long a round will take, from its first steps: supernet training, fitness-indicator (theta)
updates and Pareto retrieval, printed and logged when a round starts so that the sizes (epochs,
D, BN images) can be fitted to the data and the machine before hours are spent."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any


TIMED_SMALL = 4  # the round estimate times the retrieval of 1 and of this many candidates


def retrieval_seconds(timed: list[tuple[float, float]], work: float) -> float:
    """A retrieval's seconds for `work` multiply-accumulates, from (work, seconds) of smaller ones
    timed alike: a fixed cost (the loaders' passes, the walk's set-up) plus a cost per
    multiply-accumulate, fitted to the first and last timed; in proportion to the one timed
    where one is all there is, or the fit is not positive."""
    (w0, t0), (w1, t1) = timed[0], timed[-1]
    if w1 > w0 and t1 > t0:
        per = (t1 - t0) / (w1 - w0)
        return max(t0 - per * w0, 0.0) + per * work
    return t0 * work / w0 if w0 > 0 else t0


@dataclass
class StepTimer:
    """The seconds of a round's first weight steps, apart from those that also update theta (the
    first `skip` left out: they start the data loaders and allocate)."""

    skip: int = 1
    want: int = 2  # of each kind
    weight: list[float] = field(default_factory=list)
    theta: list[float] = field(default_factory=list)
    seen: int = 0

    def add(self, seconds: float, with_theta: bool) -> None:
        self.seen += 1
        if self.seen > self.skip:
            (self.theta if with_theta else self.weight).append(seconds)

    @property
    def ready(self) -> bool:
        return len(self.weight) >= self.want and len(self.theta) >= self.want

    @property
    def weight_step_s(self) -> float:
        return statistics.median(self.weight)

    @property
    def theta_step_s(self) -> float:
        """A theta update's own time: a step with one, less a step without."""
        return max(0.0, statistics.median(self.theta) - self.weight_step_s)


@dataclass
class RoundEstimate:
    round: int
    weight_steps: int  # left in the round
    theta_steps: int
    weight_step_s: float
    theta_step_s: float
    candidates: int  # to evaluate in the retrieval (at most, before the first retrieval)
    candidate_s: float  # seconds per candidate, their shared prefixes computed once
    measured_retrieval: bool  # candidate_s and candidates from the previous round's retrieval

    @property
    def train_s(self) -> float:
        return self.weight_steps * self.weight_step_s

    @property
    def theta_s(self) -> float:
        return self.theta_steps * self.theta_step_s

    @property
    def retrieval_s(self) -> float:
        return self.candidates * self.candidate_s

    @property
    def total_s(self) -> float:
        return self.train_s + self.theta_s + self.retrieval_s

    def to_dict(self) -> dict[str, Any]:
        out = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        out.update(train_s=round(self.train_s, 1), theta_s=round(self.theta_s, 1),
                   retrieval_s=round(self.retrieval_s, 1), total_s=round(self.total_s, 1))
        return out

    def describe(self) -> str:
        many = "" if self.measured_retrieval else "up to "
        where = ("as in the last round" if self.measured_retrieval
                 else f"from 1 and {TIMED_SMALL} timed, scaled by the work of all with shared prefixes once")
        share = self.retrieval_s / self.total_s if self.total_s > 0 else 0.0
        return (f"round {self.round}: about {duration(self.total_s)} to go: training {duration(self.train_s)} "
                f"({count(self.weight_steps, 'step')} of {self.weight_step_s:.3g} s), theta {duration(self.theta_s)} "
                f"({count(self.theta_steps, 'update')} of {self.theta_step_s:.3g} s), retrieval "
                f"{duration(self.retrieval_s)} ({many}{count(self.candidates, 'candidate')} of "
                f"{self.candidate_s:.3g} s, {where}; {share:.0%} of it)")


def count(n: int, noun: str) -> str:
    """'1 step', '3 steps'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def duration(seconds: float) -> str:
    """'45 s', '12 min 5 s', '3 h 20 min'."""
    s = int(round(seconds))
    if s < 60:
        return f"{max(seconds, 0):.2g} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"
