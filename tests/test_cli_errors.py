"""The one error path of the command line: exit codes, one line, no traceback, no partial output."""

from __future__ import annotations

import errno

import pytest

from hwnas import files
from hwnas.cli import arch_cmd
from hwnas.cli.main import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err):
    return err.count("\n") == 1 and "Traceback" not in err and err.startswith("hwnas: ")


def _raiser(exc):
    def cmd(args):
        raise exc
    return cmd


@pytest.mark.parametrize("exc, code, words", [
    (OSError(errno.ENOSPC, "No space left on device", "/d/x.onnx"), 1, "no space left on the disk writing /d/x.onnx"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/d"), 1, "/d is a folder"),
    (PermissionError(errno.EACCES, "Permission denied", "/d/x"), 1, "permission denied: /d/x"),
    (MemoryError(), 1, "out of memory"),
    (KeyboardInterrupt(), 130, "interrupted; no output was written"),
    (ValueError("shape mismatch\nin layer 3"), 3, "internal error: ValueError: shape mismatch in layer 3 -- this is "
                                                  "a bug in hwnas; rerun with --debug"),
])
def test_error_categories(capsys, monkeypatch, exc, code, words):
    monkeypatch.setattr(arch_cmd, "cmd_list", _raiser(exc))
    got, out, err = run(capsys, "arch", "list")
    assert got == code and one_line(err) and words in err, err


def test_debug_shows_the_traceback_anywhere_on_the_line(capsys, monkeypatch):
    monkeypatch.setattr(arch_cmd, "cmd_list", _raiser(ValueError("boom")))
    got, _, err = run(capsys, "arch", "list", "--debug")
    assert got == 3 and "Traceback" in err and err.strip().splitlines()[-1].startswith("hwnas: internal error")


def test_interrupt_says_what_was_kept(capsys, monkeypatch, tmp_path):
    def cmd(args):
        files.write_text(tmp_path / "a.json", "{}")
        files.on_interrupt("continue with --resume")
        raise KeyboardInterrupt
    monkeypatch.setattr(arch_cmd, "cmd_list", cmd)
    got, _, err = run(capsys, "arch", "list")
    assert got == 130 and one_line(err)
    assert f"kept {tmp_path / 'a.json'} (written whole); continue with --resume" in err


def test_usage_and_help_return_codes_in_process(capsys):
    assert main(["arch", "list", "--bogus"]) == 2
    assert one_line(capsys.readouterr().err)
    assert main(["--help"]) == 0
