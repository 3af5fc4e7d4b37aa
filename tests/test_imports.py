"""Every module imports without the optional (GPU, plotting) dependencies."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import hwnas


def test_import_every_module_without_optional_deps():
    names = [m.name for m in pkgutil.walk_packages(hwnas.__path__, "hwnas.")]
    assert "hwnas.cli.main" in names
    # Block the optional modules so an eager import of them fails here, not on a user's machine.
    code = (
        "import sys, importlib\n"
        "for m in ('tensorrt', 'cuda', 'pycuda', 'matplotlib', 'yaml', 'scipy'):\n"
        "    sys.modules[m] = None\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_missing_optional_dependency_names_the_extra(monkeypatch):
    from hwnas.errors import HwnasError, require

    monkeypatch.setitem(sys.modules, "yaml", None)
    try:
        require("yaml", "yaml", "Reading YAML files")
    except HwnasError as exc:
        assert "pip install 'hwnas[yaml]'" in str(exc)
    else:
        raise AssertionError("require() did not fail for a blocked module")
    assert importlib.import_module("hwnas.errors")
