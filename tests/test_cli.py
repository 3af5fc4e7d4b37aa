"""The command line: outputs, exit codes, one-line errors, --help of every command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hwnas.cli.main import build_parser, main
from hwnas.costs import network_cost
from hwnas.spaces import builtin


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", ["nsenet_gpu", "nsenet27", "nsenet"])
def test_arch_show_json(capsys, name):
    code, out, _ = run(capsys, "arch", "show", name, "--json")
    assert code == 0
    report = json.loads(out)
    cost = network_cost(builtin().networks[name]).total
    assert report["macs"] == cost.macs and report["params"] == cost.params
    assert isinstance(report["macs"], int) and isinstance(report["params"], int)
    assert sum(c["macs"] for c in report["cells"]) + report["stem"]["macs"] + report["head"]["macs"] == cost.macs
    assert report["space"] == builtin().networks[name].space.name


def test_arch_show_human(capsys):
    code, out, _ = run(capsys, "arch", "show", "nsenet_gpu")
    assert code == 0
    assert "R-16-32-112-s2" in out and "ssc_k5_t4" in out and "identity (no branch selected)" in out
    assert "1,471,130,624 MACs" in out


def test_arch_list_and_space_show(capsys):
    code, out, _ = run(capsys, "arch", "list", "--json")
    assert code == 0 and {r["name"] for r in json.loads(out)} == {"nsenet_gpu", "nsenet27", "nsenet"}
    code, out, _ = run(capsys, "space", "show", "flops27", "--json")
    shown = json.loads(out)
    assert code == 0 and len(shown["ops"]) == 27 and len(shown["positions"]) == 12


def test_failure_is_one_line_exit_1(capsys):
    code, out, err = run(capsys, "arch", "show", "nsenet_cpu")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("hwnas: error: unknown architecture 'nsenet_cpu'")


def test_malformed_file_is_one_line_exit_1(capsys, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"space": "latency19", "macro": "latency", "cells": [{"type": "R", "ops": [42]}]}))
    code, _, err = run(capsys, "arch", "show", str(path))
    assert code == 1 and err.count("\n") == 1 and "cells[0].ops[0]: unknown op index 42" in err


def test_usage_error_is_one_line_exit_2():
    proc = subprocess.run([sys.executable, "-m", "hwnas.cli.main", "arch", "shw"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "invalid choice" in proc.stderr
    assert "Traceback" not in proc.stderr


def _commands(parser, prefix=()):
    """Every (sub)command path of the parser."""
    import argparse

    yield prefix
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, prefix + (name,))


def test_help_of_every_command():
    paths = list(_commands(build_parser()))
    assert ("arch", "show") in paths and ("space", "show") in paths
    for path in paths:
        proc = subprocess.run([sys.executable, "-m", "hwnas.cli.main", *path, "--help"],
                              capture_output=True, text=True)
        assert proc.returncode == 0, (path, proc.stderr)
        assert "usage: hwnas" in proc.stdout
