"""Data-parallel search is not supported yet: a search launched by torchrun is refused before it writes."""

from __future__ import annotations

import subprocess
import sys

from hwnas.cli.main import main


def test_search_run_in_several_processes_is_refused(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    argv = ["search", "run", "--table", str(tmp_path / "t.json"), "--data", str(tmp_path / "d.npz"),
            "--target-ms", "8", "-o", str(run)]
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "does not train data-parallel yet" in err and "WORLD_SIZE=2" in err and err.count("\n") == 1
    assert not run.exists()
    # a world of one is the plain run: it gets past the refusal (and fails on the missing table)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert main(argv) == 1
    assert "data-parallel" not in capsys.readouterr().err


def test_torchrun_launch_is_refused_on_every_rank(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "hwnas.cli.main", "search", "run", "--table",
                           str(tmp_path / "t.json"), "--data", str(tmp_path / "d.npz"), "--target-ms", "8", "-o",
                           str(run)], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.count("does not train data-parallel yet") == 2, proc.stderr[-2000:]
    assert not run.exists()
