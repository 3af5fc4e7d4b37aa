"""The build's calibration: sparse-to-mid density networks, each one's ratio kept with its
density, and a factor that depends on density flagged. Checked on deterministic FLOP-model
devices where the expected ratios follow from the networks' MACs."""

from __future__ import annotations

import contextlib
import io
import statistics

import pytest

import hwnas
from hwnas.cli.main import main
from hwnas import progress
from hwnas.profiling import backends
from hwnas.profiling.validate import calibration_warning
from hwnas.spaces.sampling import slot_architecture

from conftest import REPO
from flop_backend import FlopBackend, PureFlopBackend, mmacs

TINY = str(REPO / "tests" / "data" / "tiny.json")
QUICK = hwnas.Protocol(warmup_ms=2.0, warmup_runs=1, min_sample_ms=1.0, rounds=3, network_rounds=3,
                       calibration_architectures=3)


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """The tiny space's tables on both FLOP-model devices, and what their builds wrote to stderr."""
    out = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backends, "_REGISTERED", {})
        patch.setattr(progress, "DELAY_S", 0.0)  # the bar from the start, on the captured stderr
        patch.setattr(progress, "ANYWHERE", True)
        hwnas.register_backend(FlopBackend)
        hwnas.register_backend(PureFlopBackend)
        for backend in ("flops-model", "pure-flops-model"):
            path = tmp_path_factory.mktemp("calibration") / f"{backend}.json"
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                table = hwnas.build_table(hwnas.resolve_space(TINY), hwnas.resolve_macro(TINY), 1.0,
                                          hwnas.get_backend(backend), 2, path, protocol=QUICK, progress=True)
            out[backend] = (table, path, err.getvalue())
    return out


def calibration_networks(table: hwnas.Table) -> list[hwnas.Architecture]:
    return [slot_architecture(table.space(), table.macro(), 1.0, ops, f"c{i}")
            for i, ops in enumerate(table.meta["calibration"]["cells"])]


def network_mmacs(arch: hwnas.Architecture) -> float:
    return mmacs(hwnas.build_network(arch), [(2, 3, arch.macro.input, arch.macro.input)])


def graphs_summed(arch: hwnas.Architecture) -> int:
    """How many entries (isolated graphs) the combination model adds up for `arch`, by hand:
    stem, head, each branch, and per cell with more than one term (terms - 1) adds and a division."""
    count = 2
    for pc in arch.placed:
        terms = len(pc.ops) + (pc.slot.position.cell_type == "N")
        count += len(pc.ops) + (terms if terms > 1 else 0)
    return count


def test_calibration_spans_densities_and_a_sum_of_parts_gives_one(tables):
    table = tables["pure-flops-model"][0]
    calibration = table.meta["calibration"]
    archs = calibration_networks(table)
    density = [sum(len(pc.ops) for pc in a.placed) / len(a.placed) for a in archs]
    assert calibration["branches_per_cell"] == pytest.approx(density, abs=1e-3)
    assert density[0] == QUICK.calibration_max_branches == 3.0  # every op of the 3-op space
    assert density[-1] < density[0]
    # on a device where a network takes the sum of its parts, measured / summed is 1 at every density
    assert calibration["ratios"] == pytest.approx([1.0] * 3, abs=1e-3)
    assert calibration["consistent"] and calibration["spread"] < 1e-3
    assert calibration_warning(calibration) is None


def test_a_density_dependent_ratio_is_flagged(tables, capsys):
    table, path, _ = tables["flops-model"]  # every isolated graph pays 1 ms more
    calibration = table.meta["calibration"]
    expected = [(1.0 + network_mmacs(a)) / (graphs_summed(a) + network_mmacs(a)) for a in calibration_networks(table)]
    assert calibration["ratios"] == pytest.approx(expected, rel=1e-4)
    assert calibration["factor"] == pytest.approx(statistics.median(expected), rel=1e-4)
    spread = (max(expected) - min(expected)) / statistics.median(expected)
    assert calibration["spread"] == pytest.approx(spread, rel=1e-3) and spread > QUICK.calibration_tolerance
    assert not calibration["consistent"]
    assert main(["table", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "warning: the calibration ratios (measured / summed) disagree" in out
    assert f"{calibration['ratios'][0]} at 3.0 branches/cell" in out


def test_calibration_shows_progress_with_time_left(tables):
    err = tables["pure-flops-model"][2]
    calibrating = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("calibrate")]
    assert calibrating and f"{QUICK.network_rounds}/{QUICK.network_rounds}" in calibrating[-1]
    assert "<" in calibrating[-1]  # tqdm's elapsed<remaining
