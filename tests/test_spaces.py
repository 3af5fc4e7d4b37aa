"""The built-in spaces, macro-architectures and networks, and the layer positions."""

from __future__ import annotations

import json

import pytest

from hwnas.spaces import builtin, make_divisible
from hwnas.spaces.ops import op_from_dict

from conftest import REPO, SHARED_REFERENCE


def test_builtin_data_is_the_reference():
    if not SHARED_REFERENCE.exists():
        pytest.skip(f"the shared reference is not beside this checkout ({SHARED_REFERENCE})")
    ours = json.loads((REPO / "hwnas" / "data" / "nse.json").read_text())
    assert ours == json.loads(SHARED_REFERENCE.read_text())


def test_space_sizes_and_second_space_indices():
    spaces = builtin().spaces
    assert len(spaces["latency19"].ops) == 19
    assert len(spaces["flops27"].ops) == 27
    second = spaces["flops27+second45"]
    assert len(second.ops) == 72
    assert second.ops[:27] == spaces["flops27"].ops  # indices 27..71 continue after flops27
    grouped = second.ops[27:]
    assert {op.groups for op in grouped} == {(1, 2), (2, 1), (2, 2)}
    assert {(op.kernel, op.expand) for op in grouped} == {(k, t) for k in (3, 5, 7, 9, 11) for t in (1, 3, 6)}


def test_op_names_follow_their_fields():
    for space in builtin().spaces.values():
        for op in space.ops:
            raw = {"kind": op.kind, "kernel": op.kernel, "expand": op.expand, "dilation": op.dilation,
                   "groups": list(op.groups)}
            assert op_from_dict(raw, "x").name == op.name


@pytest.mark.parametrize("value,expected", [(16, 16), (24.96, 24), (41.6, 40), (99.84, 96), (199.68, 200),
                                            (332.8, 336), (100.32, 104), (3, 8), (12, 16), (20, 24)])
def test_make_divisible(value, expected):
    assert make_divisible(value) == expected
    assert expected >= 0.9 * value and expected % 8 == 0


def test_latency_positions():
    keys = [p.key for p in builtin().macros["latency"].positions(1.0)]
    assert keys == ["N-16-16-112-s1", "R-16-32-112-s2", "N-32-32-56-s1", "R-32-64-56-s2", "N-64-64-28-s1",
                    "R-64-128-28-s2", "N-128-128-14-s1", "R-128-256-14-s2", "N-256-256-7-s1"]


def test_flops_positions_scale_all_but_first_stage():
    keys = [p.key for p in builtin().macros["flops"].positions(1.04)]
    assert keys[0] == "N-16-16-112-s1"
    assert "E-80-96-14-s1" in keys and "R-96-200-14-s2" in keys and keys[-1] == "E-200-336-7-s1"


def test_published_networks_place_into_every_slot():
    cat = builtin()
    gpu = cat.networks["nsenet_gpu"]
    assert len(gpu.placed) == 21 and len(gpu.cells) == 14
    # NSENet-GPU skips stage 1's normal cell: its first cell is the R of stage 2.
    assert gpu.placed[0].ops == () and gpu.placed[1].ops == (15,)
    assert [len(pc.ops) for pc in gpu.placed].count(0) == 7
    for name in ("nsenet27", "nsenet"):
        arch = cat.networks[name]
        assert len(arch.placed) == 22
        assert [pc.source for pc in arch.placed if pc.source is not None] == list(range(len(arch.cells)))
