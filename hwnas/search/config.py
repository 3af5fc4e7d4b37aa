"""Every setting of a search, in one place: defaults, presets, a config file (YAML or JSON),
checks, and where each value came from.

The defaults are practical ones for small data and CPUs; `--preset nse-paper` gives the settings
of NSE's appendix (Ci et al., "Evolving Search Space for Neural Architecture Search", ICCV 2021)
where the data allows (docs/search.md has the table of both, with the reason for each difference).
Layers, each overriding the one before: defaults, preset, config file, command line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from hwnas.errors import HwnasError, SpecError
from hwnas.ranges import (ADAM_BETA, ALPHA, ANY_NUMBER, BATCH, BETA, COUNT, COUNT0, FRACTION, LEARNING_RATE,
                          NON_NEGATIVE, OPEN_FRACTION, POSITIVE, ROUNDS, SEED, SHARE, TARGET, Range)
from hwnas.supernet.regularizer import ALPHA_SCALINGS, DEFAULT_ALPHA_SCALING, DEFAULT_OUTER, FORMS, OUTER
from hwnas.supernet.search import THETA_BETAS

METRICS = ("latency", "macs")
CONSTRAINTS = ("budget", "interval")
THETA_SCHEDULES = ("cosine", "constant")
K_BY_METRIC = {"latency": 6, "macs": 5}  # NSE's K: 6 ops per layer for latency, 5 for FLOPs
EDGE_SHARE = 20  # the default D_e is D / 20 (NSE: 100 of 2000)


@dataclass
class SearchConfig:
    metric: str = "latency"  # latency: ms per batch (the table's); macs: millions per image
    target: float = 0.0  # the resource constraint and the regularizer's tau, in the metric's units
    constraint: str = "budget"  # budget: cost <= target; interval: NSE's [target, target * (1 + margin)]
    margin: float = 0.1  # interval: its upper end is target * (1 + margin)
    rounds: int = 100  # at most; the loop ends earlier when a layer's pool runs out (NSE)
    k: int | None = None  # candidate ops per layer; None: NSE's, 6 for latency, 5 for MACs
    epochs: int = 10  # supernet training epochs per round
    batch: int = 64
    lr: float = 0.1  # SGD (Nesterov, momentum 0.9), cosine over the round after warm-up
    warmup_epochs: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 4e-5
    theta_lr: float = 0.2  # Adam on the fitness indicators, one step every second weight step
    theta_beta2: float = THETA_BETAS[1]  # Adam's second-moment decay for theta (Adam's own default: 0.999)
    theta_schedule: str = "cosine"  # theta's learning rate: cosine-decayed over the round, or constant
    theta_every: int = 2
    form: str = "nse"  # regularizer: nse, nss, linear, fbnet
    outer: str = DEFAULT_OUTER  # the penalty's derivative at the exact E[C] (expected) or the sampled C (NSE's)
    alpha: float | None = None  # None: NSE's constant for the metric, scaled as alpha_scaling says
    alpha_scaling: str = DEFAULT_ALPHA_SCALING  # relative: alpha_NSE * (tau_NSE / tau) ** beta; fixed: alpha_NSE
    beta: float | None = None
    threshold: float = -2.0  # simplification threshold on theta
    simplify_every: int = 0  # theta steps between simplifications; 0: at the end of every epoch
    held_out: float = 0.1  # fraction of the training data carved out for theta and evaluation
    samples: int = 200  # D: distinct architectures drawn from P(theta) per retrieval; those outside the constraint are discarded
    edge_samples: int | None = None  # D_e (interval only): None: D / 20, at least 1 (0 for a budget)
    edge_margin: float = 0.1  # interval: edge samples cost [target * (1 - edge_margin), target)
    bn_images: int = 2000  # training images forwarded to recalibrate BN before each evaluation
    eval_images: int = 0  # held-out images per evaluation; 0: the whole held-out split
    eval_batch: int = 256
    fused: bool = False  # the fused multi-branch layer on the CPU (always used on GPUs)
    sync_bn: bool = True  # data-parallel: batch norms over the global batch (false: each process's share)
    checkpoint_every: int = 200  # weight steps between checkpoints (and at every round's end)
    seed: int = 0
    workers: int = 0  # DataLoader worker processes reading and prefetching batches (0: read in the main process)

    def check(self, where: str = "config") -> SearchConfig:
        """Checked and complete: the settings that depend on others (k, edge_samples) resolved."""
        def need(name: str, rng: Range) -> None:
            setattr(self, name, rng.check(getattr(self, name), f"{where}: {name}"))

        def choose(name: str, allowed: tuple[str, ...]) -> None:
            if getattr(self, name) not in allowed:
                raise SpecError(f"{where}: {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

        for name, allowed in (("metric", METRICS), ("form", FORMS), ("constraint", CONSTRAINTS), ("outer", OUTER),
                              ("alpha_scaling", ALPHA_SCALINGS), ("theta_schedule", THETA_SCHEDULES)):
            choose(name, allowed)
        if self.k is None:
            self.k = K_BY_METRIC[self.metric]
        for name, rng in [("target", TARGET), ("margin", POSITIVE), ("rounds", ROUNDS), ("k", COUNT),
                          ("epochs", COUNT), ("batch", BATCH), ("lr", LEARNING_RATE), ("warmup_epochs", NON_NEGATIVE),
                          ("momentum", FRACTION), ("weight_decay", NON_NEGATIVE), ("theta_lr", LEARNING_RATE),
                          ("theta_beta2", ADAM_BETA), ("theta_every", COUNT), ("simplify_every", COUNT0),
                          ("samples", COUNT), ("edge_margin", SHARE), ("bn_images", COUNT),
                          ("eval_images", COUNT0), ("eval_batch", BATCH), ("checkpoint_every", COUNT),
                          ("seed", SEED), ("workers", COUNT0)]:
            need(name, rng)
        if self.edge_samples is None:
            self.edge_samples = max(1, self.samples // EDGE_SHARE) if self.constraint == "interval" else 0
        need("edge_samples", COUNT0)
        if self.constraint == "budget" and self.edge_samples:
            raise SpecError(f"{where}: edge_samples ({self.edge_samples}) need the interval constraint: they correct "
                            f"the front at an interval's lower end, and a budget (cost <= target) has none; set "
                            f"edge_samples 0, or constraint interval")
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


# NSE's appendix (Ci et al., ICCV 2021): supernet training, fitness indicators, retrieval. What the
# paper leaves to the data (the held-out split's size, here a fraction) stays the user's.
PRESETS: dict[str, dict[str, Any]] = {
    "nse-paper": {
        "k": K_BY_METRIC,  # per metric
        "epochs": 100, "batch": 1024, "lr": 0.4, "warmup_epochs": 2.0, "momentum": 0.9, "weight_decay": 4e-5,
        "theta_lr": 0.1, "theta_beta2": 0.999, "theta_schedule": "constant", "theta_every": 2,
        "form": "nse", "outer": "sampled", "alpha_scaling": "fixed", "threshold": -2.0,
        "constraint": "interval", "margin": 0.1, "samples": 2000, "edge_samples": 100,
        "edge_margin": 10 / 300,  # the edge samples of its Fig. 11: 290-300 MFLOPs below tau = 300
        "bn_images": 20000, "eval_images": 50000,
    },
}


def preset_settings(name: str, metric: str) -> dict[str, Any]:
    """A preset's settings for a metric, e.g. SearchConfig(**preset_settings("nse-paper", "macs"),
    metric="macs", target=300.0)."""
    if name not in PRESETS:
        raise HwnasError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    if metric not in METRICS:
        raise HwnasError(f"unknown metric '{metric}'; choose one of {', '.join(METRICS)}")
    return {k: (v[metric] if isinstance(v, dict) else v) for k, v in PRESETS[name].items()}


def layered(metric: str, preset: str | None = None, file_settings: dict[str, Any] | None = None,
            file_name: str | None = None, options: dict[str, Any] | None = None
            ) -> tuple[SearchConfig, dict[str, str]]:
    """The checked settings from the layers defaults < preset < config file < options, and for each
    setting where its value came from ("default", "preset NAME", "config file PATH", "command line")."""
    settings: dict[str, Any] = {}
    sources: dict[str, str] = {}
    layers = [(preset_settings(preset, metric) if preset else {}, f"preset {preset}"),
              (file_settings or {}, f"config file {file_name}"), (options or {}, "command line")]
    for values, source in layers:
        for key, value in values.items():
            settings[key], sources[key] = value, source
    where = f"config file {file_name}" if file_settings else "options"
    cfg = SearchConfig.from_dict(settings, where).check(where)
    return cfg, setting_sources(cfg, sources)


def setting_sources(cfg: SearchConfig, given: dict[str, str] | None = None) -> dict[str, str]:
    """Where each setting came from: `given`'s word for it, else "default" when it holds its
    default (k and edge_samples: the one their metric or constraint implies), else "given"."""
    given = given or {}
    derived = {"k": K_BY_METRIC.get(cfg.metric),
               "edge_samples": max(1, cfg.samples // EDGE_SHARE) if cfg.constraint == "interval" else 0}
    out = {}
    for f in fields(SearchConfig):
        value = getattr(cfg, f.name)
        if f.name in given:
            out[f.name] = given[f.name]
        elif value == f.default or (value is not None and value == derived.get(f.name)):
            out[f.name] = "default"
        else:
            out[f.name] = "given"
    return out
