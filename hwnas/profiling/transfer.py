"""`hwnas table transfer`: a table for this device from a table measured on another device, by
measuring a small, chosen part of it (docs/transfer.md).

1. Selection (`select`). The entries to measure are chosen before measuring, from the source
   table alone: first greedily for coverage (every kind of entry, kernel size, expansion,
   dilation, groups, stride, cell type and resolution of the plan, the entry that covers most
   values not yet covered first), then, with the budget left, the entry whose measurement takes
   most off the predicted variance of all the prices still to be predicted, each weighted by its
   use in networks (source latency times the cells at its position): the model's variance given
   the entries chosen so far plus the noise of the source's own measurement, so an entry the
   source measured poorly, or unlike every chosen one, is measured (a sequential I-optimal
   design).
2. Measurement: those entries are measured by the table build itself (`build_table(keys=...)`),
   with this device's backend and protocol, into the new table: as ratios to the table's reference
   network timed in every round, in milliseconds at the reference's level (docs/protocol.md).
3. Model (`TransferModel`): per entry, log(new / source) = intercept + offset of its family
   (op kind, merge add, merge scale, stem, head) + slopes on three properties of the entry on
   the source device: its size (log source latency), its achieved traffic (log elements moved
   per source ms: how close to memory-bound) and its achieved compute (log MACs per source ms),
   plus a size slope per family. Ridge penalties pull the offsets and slopes toward one ratio
   for all entries; their strength is chosen by leave-one-out error; the fit is robust (Huber
   weights). Every transferred entry gets a predicted uncertainty (the standard deviation of
   its log latency).
4. Calibration: whole random networks timed on this device with the reference, as a build
   calibrates.

The new table is of format 2. A transferred entry is stored as a measured one is, as a ratio to the
reference (its predicted latency / the level) from which its latency is derived (`transferred_entry`,
`refer_entries`), so predict, validate, `predict --check` and the calibration refer it to the same
machine state. The source may be of format 1 (entries as timed) or 2 (ratios at its own level): the
model reads its latencies, and is indifferent to their common scale. The table records each entry's
origin ('measured' or 'transferred', with the source latency and the uncertainty of a transferred
one) and, in `meta.transfer`, the source table's format, device, backend, software, protocol and
reference, the selection and why each entry was chosen, the model and its leave-one-out error on
the measured entries.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.costs import head_traffic, op_traffic, stem_traffic
from hwnas.errors import HwnasError
from hwnas.profiling.backends import Backend
from hwnas.profiling.protocol import Protocol, Stats, median_uncertainty
from hwnas.profiling.table import (MEASURED, ORIGIN_FIELD, PART_FIELD, TRANSFER_FIELD, TRANSFERRED, VERSION, Table,
                                   utc_now)
from hwnas.spaces.arch import Space
from hwnas.spaces.macro import Macro

DEFAULT_BUDGET = 0.1
MIN_MEASURED = 4  # a fit and a leave-one-out check need a few points
FEATURES = ("size", "traffic_rate", "compute_rate")
# Ridge strengths (in units of the residual variance) tried by leave-one-out, for the family
# offsets and for the slopes; and the one the selection assumes before anything is measured.
LAMBDAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
EXACT_LOO = 16  # grid points whose leave-one-out error is then computed by refitting
SELECTION_LAMBDA = 0.1
SELECTION_RESIDUAL = 0.05  # the residual (log) the selection assumes, against the source's own noise: 5%
HUBER_K = 1.345
INTERACTION = 3.0
MIN_SCALE = 0.01  # log units: residuals below 1% count as equal
FAMILY_PRIOR = 3.0  # how many of its own held-out residuals a family's uncertainty needs to stand alone


# --- what is known of each entry before measuring ------------------------------------------------

@dataclass(frozen=True)
class Candidate:
    """An entry of the plan as the source table shows it."""

    key: str
    family: str  # op kind, merge_add, merge_scale, stem or head
    attributes: tuple[tuple[str, str], ...]  # what the selection covers: (name, value)
    source_ms: float
    source_sd: float  # standard deviation of the source's log latency (its own noise)
    macs: int  # per batch
    traffic: int  # elements moved per batch
    uses: int = 1  # cells of the macro-architecture at its position (1 for stem and head)

    @property
    def weight(self) -> float:
        """How much its error weighs in networks' prices: its latency times the cells that use it."""
        return self.source_ms * self.uses


def _source_sd(entry: dict[str, Any]) -> float:
    """The noise of a source entry's log latency: the standard error of its median (format 2: of its
    ratio to the source's reference, whose level is common to all entries), plus, in a table of
    format 1, the probe's drift for an entry measured while the machine's speed changed."""
    stats = Stats.from_dict(entry.get("ratio", entry["latency"]))
    var = median_uncertainty(stats) ** 2 if stats.count > 0 else 0.0
    if "drift" in stats.flags:
        var += math.log(float(entry.get("probe_drift", 1.0))) ** 2
    return math.sqrt(var)


def candidates(source: Table) -> list[Candidate]:
    """Every entry of the source's plan, in plan order."""
    from hwnas.profiling.shards import plan_of

    space, macro = source.space(), source.macro()
    scale, batch = float(source.meta["scale"]), int(source.meta["batch"])
    ops = {op.name: op for op in space.ops}
    positions = {pos.key: pos for pos in macro.positions(scale)}
    cells: dict[str, int] = {}
    for slot in macro.slots(scale):
        cells[slot.position.key] = cells.get(slot.position.key, 0) + 1
    out = []
    for spec in (e for group in plan_of(source) for e in group):
        attributes: dict[str, Any] = {"family": spec.kind}
        if spec.kind == "op":
            op, pos = ops[str(spec.op)], positions[str(spec.position)]
            attributes = {"family": op.kind, "kernel": op.kernel, "expand": op.expand, "dilation": op.dilation,
                          "groups": "x".join(map(str, op.groups)), "resolution": pos.resolution,
                          "stride": pos.stride, "cell": pos.cell_type}
            traffic = op_traffic(op, pos) * batch
        elif spec.kind == "stem":
            traffic = stem_traffic(macro) * batch
        elif spec.kind == "head":
            traffic = head_traffic(macro, scale) * batch
        else:  # the merges: elementwise, each input read and one output of the first input's shape written
            attributes["resolution"] = positions[str(spec.position)].resolution
            traffic = sum(math.prod(shape) for shape in spec.input_shapes) + math.prod(spec.input_shapes[0])
        entry = source.entries[spec.key]
        out.append(Candidate(spec.key, str(attributes["family"]), tuple((k, str(v)) for k, v in attributes.items()),
                             source.latency(spec.key), _source_sd(entry), int(entry["macs"]) * batch, traffic,
                             cells.get(str(spec.position), 1)))
    return out


# --- the model ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Design:
    """The model's columns for a set of candidates: intercept, one offset per family, the three
    standardised properties (their centres and scales taken over the whole plan)."""

    families: tuple[str, ...]
    centre: tuple[float, float, float]
    spread: tuple[float, float, float]

    @classmethod
    def of(cls, cands: Sequence[Candidate]) -> Design:
        raw = np.array([_raw_features(c) for c in cands])
        has_macs = np.array([c.macs > 0 for c in cands])
        centre, spread = [], []
        for j in range(3):
            col = raw[has_macs, j] if j == 2 else raw[:, j]
            mu = float(col.mean()) if len(col) else 0.0
            sd = float(col.std()) if len(col) > 1 else 0.0
            centre.append(mu)
            spread.append(sd if sd > 1e-9 else 1.0)
        return cls(tuple(dict.fromkeys(c.family for c in cands)), tuple(centre), tuple(spread))  # type: ignore[arg-type]

    @property
    def columns(self) -> list[str]:
        return ["intercept", *(f"family:{f}" for f in self.families), *FEATURES,
                *(f"size:{f}" for f in self.families)]

    def row(self, c: Candidate) -> np.ndarray:
        raw = _raw_features(c)
        z = [(raw[j] - self.centre[j]) / self.spread[j] for j in range(3)]
        if c.macs <= 0:
            z[2] = 0.0  # no MACs (a merge): the compute rate says nothing, its family's offset holds its level
        onehot = [1.0 if c.family == f else 0.0 for f in self.families]
        return np.array([1.0, *onehot, *z, *(z[0] * h for h in onehot)])

    def matrix(self, cands: Sequence[Candidate]) -> np.ndarray:
        return np.array([self.row(c) for c in cands])

    def penalty(self, family_lambda: float, slope_lambda: float) -> np.ndarray:
        """Ridge penalty: none on the intercept (a tiny one keeps an empty design invertible)."""
        return np.diag([1e-8, *([family_lambda] * len(self.families)), *([slope_lambda] * len(FEATURES)),
                        *([slope_lambda * INTERACTION] * len(self.families))])


def _raw_features(c: Candidate) -> tuple[float, float, float]:
    log_s = math.log(max(c.source_ms, 1e-9))  # a zero latency (a hand-edited table) stays finite
    return (log_s, math.log(c.traffic) - log_s, math.log(max(c.macs, 1)) - log_s)


def robust_fit(x: np.ndarray, y: np.ndarray, penalty: np.ndarray, weights: np.ndarray | None = None,
               iterations: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression with Huber weights (iteratively reweighted least squares, from `weights`
    if given): the coefficients and the final weights."""
    w = np.ones(len(y)) if weights is None else weights
    beta = np.zeros(x.shape[1])
    for _ in range(iterations):
        xw = x * w[:, None]
        new = np.linalg.solve(x.T @ xw + penalty, xw.T @ y)
        r = y - x @ new
        scale = max(1.4826 * float(np.median(np.abs(r - np.median(r)))), MIN_SCALE)
        w = np.minimum(1.0, HUBER_K * scale / np.maximum(np.abs(r), 1e-12))
        done = float(np.max(np.abs(new - beta))) < 1e-6
        beta = new
        if done:
            break
    return beta, w


def approximate_loo(x: np.ndarray, y: np.ndarray, penalty: np.ndarray) -> float:
    """Mean absolute leave-one-out residual of the weighted ridge fit, from its hat matrix
    (r_i / (1 - h_ii), the weights held fixed): for choosing the penalty without n refits."""
    beta, w = robust_fit(x, y, penalty)
    xw = x * w[:, None]
    hat = np.einsum("ij,jk,ik->i", x, np.linalg.inv(x.T @ xw + penalty), xw)
    r = (y - x @ beta) / np.maximum(1 - hat, 1e-6)
    return float(np.mean(np.abs(r)))


def design_variance(x_fit: np.ndarray, penalty: np.ndarray, x: np.ndarray) -> np.ndarray:
    """x_e' (X'X + P)^-1 x_e for every row of x: the variance of the fitted log ratio, in units of
    the residual variance."""
    inv = np.linalg.inv(x_fit.T @ x_fit + penalty)
    return np.einsum("ij,jk,ik->i", x, inv, x)


@dataclass
class TransferModel:
    """log(new / source) = design row . coefficients; fitted on the measured entries."""

    design: Design
    coefficients: np.ndarray
    family_lambda: float
    slope_lambda: float
    residual_sd: float  # of log latency, from the leave-one-out residuals
    family_sd: dict[str, float]  # the same per family, pulled toward residual_sd
    x_fit: np.ndarray
    held_out: list[dict[str, Any]]  # leave-one-out: per measured entry

    @classmethod
    def fit(cls, cands: Sequence[Candidate], measured: dict[str, float]) -> TransferModel:
        design = Design.of(cands)
        fitted = [c for c in cands if c.key in measured]
        if len(fitted) < MIN_MEASURED:
            raise HwnasError(f"{len(fitted)} measured entries: the transfer model needs at least {MIN_MEASURED}")
        x = design.matrix(fitted)
        y = np.array([math.log(max(measured[c.key], 1e-9) / max(c.source_ms, 1e-9)) for c in fitted])
        # the ridge strengths with the smallest leave-one-out error: the grid ranked by the hat-matrix
        # shortcut, its best few refitted without each entry in turn (ties: the stronger pull)
        shortcut = {(fl, sl): approximate_loo(x, y, design.penalty(fl, sl)) for fl in LAMBDAS for sl in LAMBDAS}
        finalists = sorted(shortcut, key=lambda k: (shortcut[k], -k[0], -k[1]))[:EXACT_LOO]
        loo = {k: _leave_one_out(x, y, design.penalty(*k)) for k in finalists}
        fl, sl = min(finalists, key=lambda k: (round(float(np.mean(np.abs(loo[k][0]))), 12), -k[0], -k[1]))
        penalty = design.penalty(fl, sl)
        residuals, variances = loo[(fl, sl)]
        coefficients, _ = robust_fit(x, y, penalty)
        # residual variance: the leave-one-out residuals over their own predictive variance factor
        # (their mean, not a robust one: a few entries the model misses must widen every uncertainty)
        scaled = [r * r / (1 + v) for r, v in zip(residuals, variances)]
        residual_sd = max(math.sqrt(statistics.fmean(scaled)), MIN_SCALE)
        # per family: its own residuals pulled toward the pooled one (FAMILY_PRIOR pseudo-entries of
        # it), so a family the model misses (tiny, cache-bound merges) says so in its uncertainty
        family_sd = {}
        for f in design.families:
            own = [q for c, q in zip(fitted, scaled) if c.family == f]
            family_sd[f] = max(math.sqrt((FAMILY_PRIOR * residual_sd ** 2 + sum(own)) / (FAMILY_PRIOR + len(own))),
                               MIN_SCALE)
        held_out = [{"key": c.key, "family": c.family, "measured_ms": measured[c.key],
                     "predicted_ms": measured[c.key] * math.exp(-r), "error": math.exp(-r) - 1}
                    for c, r in zip(fitted, residuals)]
        return cls(design, coefficients, fl, sl, residual_sd, family_sd, x, held_out)

    def predict(self, cands: Sequence[Candidate]) -> list[tuple[float, float]]:
        """(latency ms, uncertainty: the standard deviation of its log) per candidate."""
        x = self.design.matrix(cands)
        penalty = self.design.penalty(self.family_lambda, self.slope_lambda)
        var = design_variance(self.x_fit, penalty, x)
        log_ratio = x @ self.coefficients
        out = []
        for c, lr, v in zip(cands, log_ratio, var):
            residual = self.family_sd.get(c.family, self.residual_sd)
            sd = math.sqrt(residual ** 2 * (1 + float(v)) + c.source_sd ** 2)
            out.append((max(c.source_ms, 1e-9) * math.exp(float(lr)), sd))
        return out

    def summary(self) -> dict[str, Any]:
        """What the table records of the model and of its error on held-back measured entries."""
        errors = [abs(h["error"]) for h in self.held_out]
        by_family: dict[str, list[float]] = {}
        for h in self.held_out:
            by_family.setdefault(h["family"], []).append(abs(h["error"]))
        return {
            "form": "log(new ms / source ms) = intercept + family offset + slopes . standardised (log source ms, "
                    "log elements moved per source ms, log MACs per source ms) + family size slope . standardised "
                    "log source ms; ridge, Huber weights",
            "coefficients": {name: round(float(b), 5) for name, b in zip(self.design.columns, self.coefficients)},
            "feature_centre": [round(v, 5) for v in self.design.centre],
            "feature_scale": [round(v, 5) for v in self.design.spread],
            "ridge": {"family": self.family_lambda, "slopes": self.slope_lambda},
            "residual_sd": round(self.residual_sd, 5),
            "family_residual_sd": {f: round(v, 5) for f, v in self.family_sd.items()},
            "held_out": {
                "method": "leave-one-out over the measured entries",
                "n": len(errors), "mape": round(statistics.fmean(errors), 5),
                "within_10pct": round(sum(e <= 0.1 for e in errors) / len(errors), 4),
                "max_error": round(max(errors), 5),
                "by_family": {f: {"n": len(v), "mape": round(statistics.fmean(v), 5)} for f, v in by_family.items()},
                "entries": [{**h, "predicted_ms": round(h["predicted_ms"], 6), "error": round(h["error"], 5)}
                            for h in self.held_out],
            },
        }


def _leave_one_out(x: np.ndarray, y: np.ndarray, penalty: np.ndarray) -> tuple[list[float], list[float]]:
    """Each measured entry predicted by the model fitted without it: residuals (log) and the
    design variance of that prediction."""
    residuals, variances = [], []
    _, weights = robust_fit(x, y, penalty)
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        beta, _ = robust_fit(x[keep], y[keep], penalty, weights[keep])  # from the whole fit's weights: few steps
        residuals.append(float(y[i] - x[i] @ beta))
        variances.append(float(design_variance(x[keep], penalty, x[i:i + 1])[0]))
    return residuals, variances


# --- the selection -----------------------------------------------------------------------------

def select(cands: Sequence[Candidate], count: int) -> list[tuple[str, str]]:
    """`count` entries to measure, with why each was chosen, in the order chosen."""
    design = Design.of(cands)
    x = design.matrix(cands)
    penalty = design.penalty(SELECTION_LAMBDA, SELECTION_LAMBDA)
    src_var = np.array([c.source_sd ** 2 for c in cands]) / SELECTION_RESIDUAL ** 2
    weight = np.array([c.weight for c in cands])
    weight = weight / weight.sum()
    chosen: list[int] = []
    reasons: list[str] = []

    def variances() -> tuple[np.ndarray, np.ndarray]:
        """Each entry's predicted variance given the chosen ones (units of the residual variance: the
        fitted model's, plus the source's own noise), and what measuring it would take off their
        use-weighted sum over the entries not yet measured."""
        m = x @ np.linalg.inv(x[chosen].T @ x[chosen] + penalty) @ x.T  # covariances of the predictions
        own = np.diag(m)
        var = own + src_var
        # measured, an entry's own source noise goes, and every prediction still to be made shrinks by
        # its covariance with it
        left = weight.copy()
        left[chosen] = 0.0
        gain = (left @ m ** 2) / (1 + own) + left * src_var
        var[chosen] = gain[chosen] = -1.0
        return var, gain

    uncovered = {a for c in cands for a in c.attributes}
    while len(chosen) < count and uncovered:
        var, _ = variances()
        covers = [len(uncovered.intersection(c.attributes)) if i not in chosen else -1 for i, c in enumerate(cands)]
        best = max(range(len(cands)), key=lambda i: (covers[i], var[i], -cands[i].source_ms, -i))
        if covers[best] <= 0:
            break
        new = [f"{k} {v}" for k, v in cands[best].attributes if (k, v) in uncovered]
        chosen.append(best)
        reasons.append("covers " + ", ".join(new))
        uncovered -= set(cands[best].attributes)
    while len(chosen) < count:
        var, gain = variances()
        total = float(weight @ np.maximum(var, 0.0))  # the chosen ones' are 0
        best = max((i for i in range(len(cands)) if i not in chosen), key=lambda i: (gain[i], -cands[i].source_ms, -i))
        chosen.append(best)
        reasons.append(f"most informative: takes {gain[best] / total:.1%} off the use-weighted predicted variance "
                       f"of the prices")
    return [(cands[i].key, why) for i, why in zip(chosen, reasons)]


def measured_count(total: int, budget: float) -> int:
    """The number of entries a budget (a fraction of the table) measures: at most that fraction."""
    return math.floor(total * budget + 1e-9)


# --- the source and its refusals ------------------------------------------------------------------

def source_fingerprint(source: Table) -> str:
    """A digest of the source's entries and metadata: a resumed transfer must use the same source."""
    text = json.dumps(source.to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_source(source: Table, name: str, space: Space | None = None, macro: Macro | None = None,
                 scale: float | None = None, batch: int | None = None) -> None:
    """Refuse a source that cannot be transferred, or that differs from what was asked, naming the field."""
    from hwnas.profiling.shards import missing_keys

    meta = source.meta
    if not source.has_latency:
        raise HwnasError(f"{name} holds no latency (meta.backend is '{meta['backend']['name']}': MACs and params "
                         f"only): transfer from a table measured with a latency backend")
    if TRANSFER_FIELD in meta:
        raise HwnasError(f"{name} is itself a transferred table (meta.{TRANSFER_FIELD}): transfer from a table whose "
                         f"entries were all measured")
    if source.part:
        raise HwnasError(f"{name} is shard {source.part} of a sharded build (meta.{PART_FIELD}), with that shard's "
                         f"entries only: merge all parts with 'hwnas table merge' and transfer from the merged table")
    missing = missing_keys(source)
    if missing:
        raise HwnasError(f"{name} lacks {len(missing)} entr{'y' if len(missing) == 1 else 'ies'} (first: "
                         f"'{missing[0]}'): finish its build with --resume before transferring it")
    if space is not None and space.to_dict() != meta["space_def"]:
        raise HwnasError(f"{name} is a table of space {meta['space']} (meta.space), not {space.name}: transfer from "
                         f"a table of {space.name}, or build one")
    if macro is not None and macro.to_dict() != meta["macro_def"]:
        other = source.macro()
        if replace(other, input=macro.input, name=macro.name) == macro:
            raise HwnasError(f"{name} was measured at resolution {other.input} (meta.resolution), not {macro.input}: "
                             f"latency does not scale with resolution; transfer from a table at {macro.input}")
        raise HwnasError(f"{name} is a table of macro-architecture {meta['macro']} (meta.macro), not {macro.name} "
                         f"(another definition): transfer from a table of {macro.name}, or build one")
    if scale is not None and scale != meta["scale"]:
        raise HwnasError(f"{name} was measured at scale {meta['scale']} (meta.scale), not {scale}: transfer from a "
                         f"table at scale {scale}, or build one")
    if batch is not None and batch != meta["batch"]:
        raise HwnasError(f"{name} was measured at batch {meta['batch']} (meta.batch), not {batch}: latency does not "
                         f"scale linearly with batch; transfer from a table at batch {batch}")


def source_record(source: Table, name: str) -> dict[str, Any]:
    """What the new table keeps of its source: where it was measured, how, and when."""
    from hwnas.profiling.reference import LEVEL_FIELD

    m = source.meta
    record = {"file": Path(name).name, "fingerprint": source_fingerprint(source), "format": source.version,
              "device": m.get("device"), "backend": m.get("backend"), "software": m.get("software"),
              "protocol": m.get("protocol"), "statistic": source.statistic, "precision": m.get("precision"),
              "created": m.get("created"), "calibration_factor": source.calibration_factor,
              "entries": len(source.entries)}
    if m.get("reference"):  # format 2: its entries are ratios to this network, in ms at this level
        record["reference"] = {"op": m["reference"].get("op"),
                               "level_ms": m.get(LEVEL_FIELD, {}).get("level_ms")}
    return record


# --- the transfer ------------------------------------------------------------------------------

def transfer_table(source: Table, source_name: str, backend: Backend, out: str | Path, budget: float = DEFAULT_BUDGET,
                   protocol: Protocol | None = None, seed: int = 0, progress: bool = True,
                   resume: bool = False) -> Table:
    """Measure the selected entries of `source`'s plan on this device, predict the others, calibrate.

    The file `out` is written whole after every measured group (as a build writes it), then with
    every entry, then calibrated and complete; `resume=True` continues an interrupted transfer of
    the same source with the same budget."""
    from hwnas.profiling.build import build_table, calibrate_table, table_meta

    if not backend.measures_latency:
        raise HwnasError(f"backend '{backend.name}' measures no latency: nothing to transfer (a MACs table needs "
                         f"no measurement: 'hwnas table build --backend none')")
    check_source(source, source_name)
    if not 0 < budget <= 1:
        raise HwnasError(f"--budget {budget}: must be a fraction of the table's entries in (0, 1]")
    protocol = protocol or Protocol()
    space, macro = source.space(), source.macro()
    scale, batch = float(source.meta["scale"]), int(source.meta["batch"])
    cands = candidates(source)
    count = measured_count(len(cands), budget)
    if count < MIN_MEASURED:
        raise HwnasError(f"--budget {budget} measures {count} of {len(cands)} entries; the transfer model needs at "
                         f"least {MIN_MEASURED}: raise --budget to {math.ceil(MIN_MEASURED / len(cands) * 1000) / 1000}")
    started = time.monotonic()
    out = Path(out)
    origin = source_record(source, source_name)
    record: dict[str, Any] = {"source": origin, "budget": budget, "measured": count, "entries": len(cands)}
    if out.exists():
        if not resume:
            raise HwnasError(f"{out} exists; pass --resume to continue it, or choose another -o")
        table = Table.load(out)
        done = table.meta.get(TRANSFER_FIELD)
        if not done or done.get("source", {}).get("fingerprint") != origin["fingerprint"] \
                or done.get("budget") != budget:
            raise HwnasError(f"cannot resume {out}: it is not a transfer of {source_name} with --budget {budget}; "
                             f"transfer into another -o")
        if table.meta.get("complete"):
            return table
        if table.version != VERSION:
            raise HwnasError(f"cannot resume {out}: it is a transfer of format {table.version}, its entries measured "
                             f"with the drift-probe protocol; this hwnas measures entries as ratios to a reference "
                             f"network (format {VERSION}): transfer into another -o")
        selection = [(s["key"], s["why"]) for s in done["selection"]]
    else:
        selection = select(cands, count)
        record["selection"] = [{"key": k, "why": why} for k, why in selection]
        record["seconds"] = 0.0
        meta = table_meta(space, macro, scale, batch, backend, protocol)
        Table({**meta, "created": utc_now(), "complete": False, TRANSFER_FIELD: record}).save(out)
    keys = [k for k, _ in selection]
    table = build_table(space, macro, scale, backend, batch, out, resume=True, protocol=protocol, seed=seed,
                        progress=progress, keys=keys)
    if TRANSFER_FIELD not in table.meta or "model" not in table.meta[TRANSFER_FIELD]:
        table = _fill(table, cands, keys)
    transfer = table.meta[TRANSFER_FIELD]
    transfer["seconds"] = round(float(transfer.get("seconds", 0.0)) + time.monotonic() - started, 1)
    table.save(out)
    if protocol.calibration_architectures and "calibration" not in table.meta:
        started = time.monotonic()
        calibrate_table(table, backend, protocol, seed, out, progress)
        transfer["seconds"] = round(transfer["seconds"] + time.monotonic() - started, 1)
    table.meta["complete"] = True
    table.save(out)
    return table


def _fill(table: Table, cands: Sequence[Candidate], keys: Sequence[str]) -> Table:
    """Fit the model on the measured entries and write every other entry with its prediction.

    The model is fitted on the measured entries' latencies at the table's reference level; a
    transferred entry is stored as its ratio to the reference (`transferred_entry`), so that its
    latency is derived from its ratio exactly as a measured entry's is (`refer_entries`)."""
    from hwnas.profiling.reference import refer_entries, reference_of

    measured = {k: table.latency(k) for k in keys}
    model = TransferModel.fit(cands, measured)
    missing = [c for c in cands if c.key not in table.entries]
    predicted = dict(zip((c.key for c in missing), model.predict(missing)))
    plan_records = _plan_records(table)
    level = reference_of(table).level_ms
    entries: dict[str, dict[str, Any]] = {}
    for c in cands:
        if c.key in table.entries:
            entries[c.key] = {**table.entries[c.key], ORIGIN_FIELD: MEASURED}
        else:
            entries[c.key] = transferred_entry(plan_records[c.key], c, *predicted[c.key], level)
    table.entries = entries
    refer_entries(table)
    table.meta[TRANSFER_FIELD]["model"] = model.summary()
    table.meta["updated"] = utc_now()
    return table


def transferred_entry(record: dict[str, Any], cand: Candidate, ms: float, sd: float, level_ms: float) -> dict[str, Any]:
    """A transferred entry of a table of format 2: the plan's record of it, its predicted latency as a
    ratio to the table's reference (ms / the reference's level; statistics of no runs, `count` 0),
    its origin, its source latency and the uncertainty of its log latency. Its `latency` is that
    ratio times the level, written by `refer_entries` as for every entry."""
    ratio = ms / level_ms
    return {**record, "ratio": Stats(0, ratio, ratio, ratio, 0.0).to_dict(), ORIGIN_FIELD: TRANSFERRED,
            "transfer": {"source_ms": round(cand.source_ms, 6), "uncertainty": round(sd, 5), "family": cand.family}}


def _plan_records(table: Table) -> dict[str, dict[str, Any]]:
    """The plan's own record (kind, MACs, params, op, position) of every entry."""
    from hwnas.profiling.shards import plan_of

    return {e.key: dict(e.record()) for g in plan_of(table) for e in g}


def transfer_summary(table: Table) -> dict[str, Any]:
    """What a transferred table rests on, for `hwnas table transfer` and `hwnas table show`."""
    t = table.meta[TRANSFER_FIELD]
    transferred = table.transferred
    uncertainties = [float(table.entries[k]["transfer"]["uncertainty"]) for k in transferred]
    device = t["source"].get("device") or {}
    return {"entries": len(table.entries), "measured": len(table.entries) - len(transferred),
            "transferred": len(transferred), "source": t["source"]["file"],
            "source_device": device.get("name", device.get("type")),
            "source_backend": (t["source"].get("backend") or {}).get("name"), "budget": t["budget"],
            "held_out": ({k: v for k, v in t["model"]["held_out"].items() if k not in ("entries", "method")}
                         if "model" in t else None),  # None: still measuring
            "median_uncertainty": statistics.median(uncertainties) if uncertainties else 0.0,
            "calibration_factor": table.meta.get("calibration", {}).get("factor"),
            "seconds": t.get("seconds"), "selection": t["selection"]}
