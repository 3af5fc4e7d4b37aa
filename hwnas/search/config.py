"""Every setting of a search, in one place: defaults, a config file (YAML or JSON), checks.

Defaults follow NSE (Ci et al., "Evolving Search Space for Neural Architecture Search",
ICCV 2021) where NSE gives a value that suits any dataset (K, D, D_e, threshold, the
optimisers); sizes of training (epochs, batch) are the user's to choose for their data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from hwnas.ranges import (ALPHA, ANY_NUMBER, BATCH, BETA, COUNT, COUNT0, FRACTION, LEARNING_RATE, NON_NEGATIVE,
                          OPEN_FRACTION, ROUNDS, SEED, TARGET, Range)
from hwnas.errors import HwnasError, SpecError

METRICS = ("latency", "macs")
FORMS = ("nse", "nss", "linear", "fbnet")


@dataclass
class SearchConfig:
    metric: str = "latency"  # latency: ms per batch (the table's); macs: millions per image
    target: float = 0.0  # the resource constraint and the regularizer's tau, in the metric's units
    rounds: int = 100  # at most; the loop ends earlier when a layer's pool runs out (NSE)
    k: int = 6  # candidate ops per layer (NSE: 6 for latency, 5 for FLOPs)
    epochs: int = 10  # supernet training epochs per round
    batch: int = 64
    lr: float = 0.1  # SGD (Nesterov, momentum 0.9), cosine over the round after warm-up
    warmup_epochs: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 4e-5
    theta_lr: float = 0.2  # Adam on the fitness indicators, one step every second weight step
    theta_every: int = 2
    form: str = "nse"  # regularizer: nse, nss, linear, fbnet
    alpha: float | None = None  # None: NSE's constant for the metric
    beta: float | None = None
    threshold: float = -2.0  # simplification threshold on theta
    simplify_every: int = 0  # theta steps between simplifications; 0: at the end of every epoch
    held_out: float = 0.1  # fraction of the training data carved out for theta and evaluation
    samples: int = 2000  # D: architectures sampled from P(theta) in Pareto retrieval
    edge_samples: int = 100  # D_e: samples just beyond the constraint
    edge_margin: float = 0.1  # "just beyond": cost in (target, target * (1 + margin)]
    bn_images: int = 20000  # training images forwarded to recalibrate BN before each evaluation
    eval_images: int = 0  # held-out images per evaluation; 0: the whole held-out split
    eval_batch: int = 256
    fused: bool = False  # the fused multi-branch layer on the CPU (always used on GPUs)
    sync_bn: bool = True  # data-parallel: batch norms over the global batch (false: each process's share)
    checkpoint_every: int = 200  # weight steps between checkpoints (and at every round's end)
    seed: int = 0
    workers: int = 0  # DataLoader worker processes reading and prefetching batches (0: read in the main process)

    def check(self, where: str = "config") -> SearchConfig:
        def need(name: str, rng: Range) -> None:
            setattr(self, name, rng.check(getattr(self, name), f"{where}: {name}"))

        if self.metric not in METRICS:
            raise SpecError(f"{where}: metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.form not in FORMS:
            raise SpecError(f"{where}: form must be one of {', '.join(FORMS)}, got {self.form!r}")
        for name, rng in [("target", TARGET), ("rounds", ROUNDS), ("k", COUNT), ("epochs", COUNT),
                          ("batch", BATCH), ("lr", LEARNING_RATE), ("warmup_epochs", NON_NEGATIVE),
                          ("momentum", FRACTION), ("weight_decay", NON_NEGATIVE), ("theta_lr", LEARNING_RATE),
                          ("theta_every", COUNT), ("simplify_every", COUNT0), ("samples", COUNT),
                          ("edge_samples", COUNT0), ("edge_margin", NON_NEGATIVE), ("bn_images", COUNT),
                          ("eval_images", COUNT0), ("eval_batch", BATCH), ("checkpoint_every", COUNT),
                          ("seed", SEED), ("workers", COUNT0)]:
            need(name, rng)
        if self.alpha is not None:
            need("alpha", ALPHA)
        if self.beta is not None:
            need("beta", BETA)
        need("held_out", OPEN_FRACTION)
        need("threshold", ANY_NUMBER)
        for name in ("fused", "sync_bn"):
            if not isinstance(getattr(self, name), bool):
                raise SpecError(f"{where}: {name} must be true or false, got {getattr(self, name)!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> SearchConfig:
        if not isinstance(raw, dict):
            raise SpecError(f"{where}: expected a mapping of settings, got {type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(repr(k) if not isinstance(k, str) else k for k in raw if k not in known)
        if unknown:
            raise SpecError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{k: _number(v) for k, v in raw.items()})


def _number(value: Any) -> Any:
    """YAML 1.1 reads 4e-5 (no dot) as a string: such a string is taken as the number it spells."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def read_config(path: str | Path) -> dict[str, Any]:
    """The settings of a YAML or JSON config file (not yet checked: CLI options may override)."""
    from hwnas.spaces.catalog import read_document

    raw = read_document(Path(path))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise HwnasError(f"{path}: expected a mapping of settings at the top level")
    return raw
