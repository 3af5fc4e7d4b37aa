"""Validation of spaces, macros and architectures: clear errors naming the cell and field."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwnas.errors import HwnasError, SpecError
from hwnas.spaces import resolve_architecture
from hwnas.spaces.catalog import builtin, catalog_from_dict

GPU = {"space": "latency19", "macro": "latency", "scale": 1.0,
       "cells": [{"type": "R", "ops": [15]}, {"type": "N", "ops": [11]}, {"type": "R", "ops": [1, 17]},
                 {"type": "R", "ops": [2]}, {"type": "R", "ops": [8]}]}


def load_net(net: dict) -> None:
    catalog_from_dict({"networks": {"mine": net}}, "mine.json", builtin())


def with_cell(i: int, **fields) -> dict:
    net = copy.deepcopy(GPU)
    net["cells"][i].update(fields)
    return net


@pytest.mark.parametrize("net,message", [
    (with_cell(2, ops=[1, 19]), r"cells\[2\]\.ops\[1\]: unknown op index 19; space latency19 has ops 0..18"),
    (with_cell(0, ops=[]), r"cells\[0\]\.ops: a reduction cell \(R\) needs at least one op"),
    (with_cell(2, ops=[1, 1]), r"cells\[2\]\.ops\[1\]: op 1 \(dw_k3_t3\) appears twice"),
    (with_cell(1, type="X"), r"cells\[1\]\.type: expected N, R or E"),
    (with_cell(1, ops="3"), r"cells\[1\]\.ops: expected a list"),
    (with_cell(1, ops=[True]), r"cells\[1\]\.ops\[0\]: expected an op index"),
    ({**GPU, "scale": 0}, r"scale: must be a finite number > 0 and <= 16"),
    ({**GPU, "scale": -1.5}, r"scale: must be a finite number > 0 and <= 16"),
    ({**GPU, "space": "latency20"}, r"space: unknown space 'latency20'"),
    ({**GPU, "macro": "tiny"}, r"macro: unknown macro-architecture 'tiny'"),
    ({**GPU, "cells": GPU["cells"][:-1]}, r"cells\[4\]: expected the R cell that starts stage 5"),
    ({**GPU, "cells": GPU["cells"] + [{"type": "R", "ops": [1]}]}, r"cells\[5\]: a R cell after the last"),
    ({**GPU, "cells": [GPU["cells"][0]] + [{"type": "N", "ops": [1]}] * 4 + GPU["cells"][2:]},
     r"cells\[4\]: stage 2 .* holds at most 3 normal cells"),
    ({**GPU, "cells": []}, r"cells: expected a non-empty list"),
])
def test_malformed_architecture(net, message):
    with pytest.raises(SpecError, match=message):
        load_net(net)


def test_error_names_the_network():
    with pytest.raises(SpecError, match=r"mine\.json: networks\.mine\.cells\[2\]"):
        load_net(with_cell(2, ops=[99]))


def test_explicit_empty_normal_cells_are_accepted():
    net = copy.deepcopy(GPU)
    net["cells"] = [{"type": "N", "ops": []}] + net["cells"]
    load_net(net)


def test_expansion_cell_must_not_be_empty():
    net = {"space": "flops27", "macro": "flops", "scale": 1.0,
           "cells": [{"type": "R", "ops": [0]}, {"type": "R", "ops": [0]}, {"type": "R", "ops": [0]},
                     {"type": "E", "ops": []}, {"type": "R", "ops": [0]}, {"type": "E", "ops": [0]}]}
    with pytest.raises(SpecError, match=r"cells\[3\]\.ops: an expansion cell \(E\) needs at least one op"):
        load_net(net)


def test_space_and_macro_errors():
    with pytest.raises(SpecError, match=r"spaces\.s\.ops\[0\]\.kind: expected one of dw, conv, dual, ssc"):
        catalog_from_dict({"spaces": {"s": {"ops": [{"kind": "pool", "kernel": 3, "expand": 1}]}}}, "f", None)
    with pytest.raises(SpecError, match=r"ops\[0\]\.kernel: must be odd"):
        catalog_from_dict({"spaces": {"s": {"ops": [{"kind": "dw", "kernel": 4, "expand": 1}]}}}, "f", None)
    bad_macro = {"input": 32, "stem": {"channels": 8, "stride": 1}, "head": {"conv1x1": 16, "classes": 10},
                 "stages": [{"channels": 16, "cells": 2, "first": "N"}]}
    with pytest.raises(SpecError, match="starts with a normal cell but changes channels 8 -> 16"):
        catalog_from_dict({"macro": {"m": bad_macro}}, "f", None)


def test_user_file_with_own_space_and_macro(tmp_path):
    doc = {
        "spaces": {"tiny": {"ops": [{"kind": "dw", "kernel": 3, "expand": 2}, {"kind": "ssc", "kernel": 5, "expand": 1}]}},
        "macro": {"small": {"input": 32, "stem": {"channels": 8, "stride": 1}, "head": {"conv1x1": 32, "classes": 10},
                            "stages": [{"channels": 8, "cells": 2, "first": "N"},
                                       {"channels": 16, "cells": 2, "first": "R"}]}},
        "networks": {"a": {"space": "tiny", "macro": "small", "scale": 1.0,
                           "cells": [{"type": "N", "ops": [0]}, {"type": "R", "ops": [0, 1]}]},
                     "b": {"space": "latency19", "macro": "latency", "scale": 1.0, "cells": GPU["cells"]}},
    }
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(doc))
    assert resolve_architecture(f"{path}:a").space.name == "tiny"
    with pytest.raises(HwnasError, match="defines 2 architectures"):
        resolve_architecture(str(path))
    with pytest.raises(HwnasError, match="unknown architecture 'c'"):
        resolve_architecture(f"{path}:c")
    single = tmp_path / "net.yaml"
    import yaml

    single.write_text(yaml.safe_dump(doc["networks"]["b"]))
    assert resolve_architecture(str(single)).name == "net"


def test_unreadable_inputs(tmp_path):
    with pytest.raises(HwnasError, match="no such file"):
        resolve_architecture(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SpecError, match="not valid JSON"):
        resolve_architecture(str(bad))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 80) | st.floats(allow_nan=True) | st.text(max_size=6),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=6), children, max_size=5),
    max_leaves=20,
)


@st.composite
def mutated_networks(draw):
    """A valid network with one field somewhere replaced by an arbitrary JSON value."""
    net = copy.deepcopy(GPU)
    target = draw(st.sampled_from(["space", "macro", "scale", "cells", "cell", "cell_type", "cell_ops", "op",
                                   "drop_cell", "extra_key"]))
    value = draw(json_values)
    i = draw(st.integers(0, len(net["cells"]) - 1))
    if target in ("space", "macro", "scale", "cells"):
        net[target] = value
    elif target == "cell":
        net["cells"][i] = value
    elif target == "cell_type":
        net["cells"][i]["type"] = value
    elif target == "cell_ops":
        net["cells"][i]["ops"] = value
    elif target == "op":
        net["cells"][i]["ops"][0] = value
    elif target == "drop_cell":
        del net["cells"][i]
    else:
        net[draw(st.text(max_size=5))] = value
    return net


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_networks())
def test_malformed_input_never_crashes(net):
    try:
        load_net(net)
    except SpecError as exc:
        assert str(exc)  # a message, never an empty error


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_arbitrary_documents_never_crash(doc):
    try:
        catalog_from_dict(doc, "doc.json", builtin())
    except SpecError:
        pass
