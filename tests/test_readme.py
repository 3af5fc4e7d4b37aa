"""README.md cannot drift from the code: its Python runs, its quick start runs, its commands parse.

- Every ```python block of README.md is executed as written, from an empty folder (a user's
  own, outside the checkout; tests/test_wheel.py runs them against an installed wheel too).
- Every command of the quick start is run, or checked against CI where running it here would
  be circular (the install and the test command are what `.ci/run` runs). The `hwnas` commands
  run on a tiny space: QUICK_START_TINY below maps each part of the real command that would be
  too slow for a test to its tiny stand-in (a spec file of three ops and six cells instead of
  latency19 and NSENet-GPU, the `none` backend instead of minutes of onnxruntime timing).
- Every other `hwnas ...` line in README's shell blocks is parsed by the real argument parser
  (they need a GPU or take minutes), and every command of the commands table has a `--help`
  that knows each option the table names.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from hwnas.cli.main import build_parser, main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TINY = REPO / "tests" / "data" / "tiny.json"

# Real quick-start argument -> tiny stand-in. Every key must occur in the quick start (checked),
# so this mapping cannot outlive the command it stands in for.
QUICK_START_TINY = {
    "--space latency19": f"--space {TINY}",
    "--macro latency": f"--macro {TINY}",
    "--backend ort": "--backend none",
    "--batch 16": "--batch 2",
    "nsenet_gpu": f"{TINY}:tinynet",
}
ENVIRONMENT_STEPS = {"python3 -m venv .venv", ". .venv/bin/activate"}


def blocks(text: str) -> list[tuple[str, str, int, str]]:
    """(language, code, first line, section title) of every fenced block."""
    out, section = [], ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("## "):
            section = lines[i][3:].strip()
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            out.append((fence.group(1), "\n".join(lines[i + 1:end]), i + 2, section))
            i = end
        i += 1
    return out


README_BLOCKS = blocks(README.read_text(encoding="utf-8"))
PYTHON_BLOCKS = [(code, line) for lang, code, line, _ in README_BLOCKS if lang == "python"]


def shell_commands(section: str | None = None, exclude: str | None = None) -> list[str]:
    """The commands of the README's bash blocks (split at '&&'), of one section or all but one."""
    out = []
    for lang, code, _, title in README_BLOCKS:
        if lang != "bash" or (section is not None and title != section) or title == exclude:
            continue
        for line in code.splitlines():
            out += [c.strip() for c in line.split("&&") if c.strip() and not c.strip().startswith("#")]
    return out


def ci_lines() -> list[str]:
    """The lines of .ci/run, its pip installs without their -q (CI's logs stay short)."""
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    return [re.sub(r" -q(?= )", "", line) if line.startswith("pip install") else line for line in lines]


def tiny(command: str) -> str:
    for real, stand_in in QUICK_START_TINY.items():
        command = re.sub(rf"(?<!\S){re.escape(real)}(?!\S)", stand_in, command)
    return command


def test_there_is_a_python_example():
    assert PYTHON_BLOCKS, "README.md has no ```python block"


@pytest.mark.parametrize("code,line", PYTHON_BLOCKS, ids=[f"README.md:{line}" for _, line in PYTHON_BLOCKS])
def test_python_block_runs(code, line, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})


def test_quick_start_runs_on_a_tiny_space(tmp_path, monkeypatch, capsys):
    commands = shell_commands("Quick start")
    joined = " ".join(commands)
    unused = [real for real in QUICK_START_TINY if not re.search(rf"(?<!\S){re.escape(real)}(?!\S)", joined)]
    assert not unused, f"QUICK_START_TINY maps arguments the quick start no longer has: {unused}"
    monkeypatch.chdir(tmp_path)
    ran = 0
    for command in commands:
        if command in ENVIRONMENT_STEPS:
            continue
        if command.startswith("pip install") or command.startswith("python -m pytest"):
            assert command in ci_lines(), f"the quick start's '{command}' is not what .ci/run runs"
            continue
        argv = shlex.split(tiny(command))
        assert argv[0] == "hwnas", f"the test does not know how to run the quick start's '{command}'"
        assert main(argv[1:]) == 0, f"'{command}' failed on the tiny space: {capsys.readouterr()}"
        ran += 1
    assert ran >= 2, "the quick start should build a table and use it"
    assert "tinynet" in capsys.readouterr().out


def test_install_lines_are_what_ci_runs():
    pips = [c for c in shell_commands("Install") if c.startswith("pip install") and "torch==" in c]
    assert pips, "the install section has no CPU install line"
    for command in pips + [c for c in shell_commands("Install") if "tensorrt-stubs" in c]:
        assert command in ci_lines(), f"README's '{command}' is not what .ci/run runs"


def test_extras_named_in_the_readme_exist():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = set()
    for found in re.findall(r"\[([\w,-]+)\]'", README.read_text(encoding="utf-8")):
        named |= set(found.split(","))
    assert named, "README names no extra"
    assert named <= extras, f"README names extras pyproject.toml does not define: {sorted(named - extras)}"


def test_other_readme_commands_parse():
    commands = [c for c in shell_commands(exclude="Quick start") if c.startswith("hwnas ")]
    assert commands
    for command in commands:
        try:
            build_parser().parse_args(shlex.split(command)[1:])
        except SystemExit as exc:
            pytest.fail(f"README's '{command}' does not parse (exit {exc.code})")


def table_commands() -> list[tuple[str, list[str], list[str]]]:
    """(row, command words, options) for each `hwnas ...` in the first column of the table."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Commands", 1)[1].split("\n## ", 1)[0]
    out = []
    for row in section.splitlines():
        if not row.startswith("| `hwnas"):
            continue
        first = row.split(" | ")[0]
        for command in re.findall(r"`(hwnas [^`]+)`", first):
            words = []
            for token in command.split()[1:]:
                if not re.fullmatch(r"[a-z][a-z-]*", token):
                    break
                words.append(token)
            out.append((row, words, re.findall(r"--[a-z][a-z0-9-]*", command)))
    return out


@pytest.mark.parametrize("row,words,options", table_commands(), ids=[" ".join(w) for _, w, _ in table_commands()])
def test_table_command_has_help_with_its_options(row, words, options, capsys):
    assert main([*words, "--help"]) == 0
    help_text = capsys.readouterr().out
    missing = [o for o in options if o not in help_text]
    assert not missing, f"'hwnas {' '.join(words)} --help' does not know {missing}"


def leaf_commands(parser=None, prefix=()) -> list[tuple[str, ...]]:
    """Every runnable command of the `hwnas` parser, as its words ('table', 'build')."""
    import argparse

    parser = parser or build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [prefix]
    out = [prefix] if prefix and parser.get_default("func") is not None else []
    for name, child in subs[0].choices.items():
        out += leaf_commands(child, (*prefix, name))
    return out


def test_every_command_is_in_the_commands_table():
    listed = {tuple(words) for _, words, _ in table_commands()}
    missing = [" ".join(c) for c in leaf_commands() if c not in listed]
    assert not missing, f"README's commands table lacks: {missing}"




MARKDOWN_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def test_links_between_the_docs_resolve():
    docs = [README, *sorted((REPO / "docs").glob("*.md"))]
    broken = [f"{doc.relative_to(REPO)}: {target}"
              for doc in docs for target in MARKDOWN_LINK.findall(doc.read_text(encoding="utf-8"))
              if "://" not in target and not (doc.parent / target).exists()]
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)
