"""The shipped text speaks to users: no word of how or where hwnas was developed.

Scans the package, the kernel sources, the benchmarks, README.md and docs/ for phrases that
belong to the development setup (its notes, its work items, its machines, the history of a
change), and for references to test files that do not exist. Each rule is a phrase, not a bare
word, so that ordinary words stay free (an onnxruntime session, "here" in "reaching here").
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCANNED = ["hwnas", "kernels", "benchmarks", "docs", "README.md"]
TEXT_SUFFIXES = {".py", ".h", ".cu", ".cpp", ".md", ".json", ".toml", ".txt", ".yaml", ".yml"}

# (what it is, pattern); matched case-insensitively, line by line.
FORBIDDEN = [
    ("the development notes", r"\bthe brief\b|\bbrief's\b|\(brief\)|\bBRIEF\.md\b|\.\./shared\b"),
    ("a numbered work item", r"\bissues?\s*#?\d+"),
    ("the development machines", r"\bthis project\b|\bthis machine\b|\bthese machines\b|\bno machine of\b"
                                 r"|\bdevelopment machines?\b|\bmachines? hwnas is developed on\b"
                                 r"|\b(?:measured|timed|profiled) here\b"),
    ("a work session", r"\b(?:previous|this|that|next|one|a|each|every|later|earlier) sessions?\b"
                       r"|\bsessions? (?:later|earlier|ago)\b"),
    ("a paper without its name (cite it: NSE, Ci et al., ICCV 2021)", r"\bthe paper(?:'s)?\b"),
    ("a development target's verdict", r"\b(?:target|goal)\b[^|\n]{0,40}?:\s*(?:met|missed)\b"),
]

# "session" as an identifier (onnxruntime's InferenceSession, a `session` variable): allowed.
SESSION_WORD = re.compile(r"\bsessions?\b", re.IGNORECASE)
ORT_SESSION = re.compile(r"InferenceSession|SessionOptions|\bsession\s*(?:[.=:,(\[]|$)"
                         r"|(?:onnxruntime|ORT)(?:'s)? (?:inference )?sessions?\b", re.IGNORECASE)
TEST_FILE = re.compile(r"\btests/[\w/]+\.py\b")


def scanned_files() -> list[Path]:
    files: list[Path] = []
    for name in SCANNED:
        path = REPO / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES
                            and "__pycache__" not in p.parts)
    return files


def findings(text: str, rules: list[tuple[str, str]]) -> list[tuple[int, str, str]]:
    """(line number, what, the line) for every forbidden phrase, and every bare "session"
    that is not an onnxruntime session."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        for what, pattern in rules:
            if re.search(pattern, line, re.IGNORECASE):
                out.append((number, what, line.strip()))
        if SESSION_WORD.search(ORT_SESSION.sub("", line)):
            out.append((number, "the word 'session' outside an onnxruntime session", line.strip()))
    return out


@pytest.mark.parametrize("line", [
    "the brief's simulated gradient", "see ../shared/BRIEF.md", "(issue 5)", "fixed in issue #12",
    "On this project's 2-core machines", "measured here: 71 ms", "No machine of this project has a GPU",
    "re-checked a session later", "the previous session", "as in the paper", "the paper's constants",
    "target 0.95: missed", "(goal 1.2x: met)", "a bare session of work",
])
def test_the_rules_catch_development_words(line):
    assert findings(line, FORBIDDEN), line


@pytest.mark.parametrize("line", [
    "session = ort.InferenceSession(model_bytes, options)", "options = ort.SessionOptions()",
    "def session(self, model: bytes | str) -> Any:", "for meta in session.get_outputs():",
    "self.binding = self.session = None", "def __init__(self, session: Any, inputs):",
    "an onnxruntime session per graph", "NSE's literal form (Ci et al., ICCV 2021)",
    "reaching here is a bug", "the target must be positive", "BN here always tracks them",
])
def test_the_rules_allow_ordinary_words(line):
    assert not findings(line, FORBIDDEN), line


def test_no_development_words_in_the_shipped_text():
    problems = [f"{path.relative_to(REPO)}:{number}: {what}: {line}"
                for path in scanned_files()
                for number, what, line in findings(path.read_text(encoding="utf-8"), FORBIDDEN)]
    assert not problems, "\n".join(problems)


def test_referenced_test_files_exist():
    missing = [f"{path.relative_to(REPO)}: {ref}"
               for path in scanned_files()
               for ref in TEST_FILE.findall(path.read_text(encoding="utf-8"))
               if not (REPO / ref).is_file()]
    assert not missing, "references to test files that do not exist:\n" + "\n".join(missing)
