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


def _imports(path):
    """(module imported, names taken from it) for every import statement of a source file."""
    import ast

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((alias.name, ()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, tuple(alias.name for alias in node.names)


def _names_the_cache_variable(path):
    """Whether the code (not its docstrings and comments) reads $HWNAS_CACHE."""
    import ast

    return any(isinstance(node, ast.Constant) and node.value == "HWNAS_CACHE"
               for node in ast.walk(ast.parse(path.read_text())))


def test_layers_point_downwards():
    """The command line sits on top: nothing below it imports hwnas.cli (settings' ranges live in
    hwnas.ranges). No module reaches up into the package root for a name (hwnas/__init__.py
    imports lazily; __version__ has its own module). The cache folder has one home."""
    from pathlib import Path

    root = Path(hwnas.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).as_posix()
        for module, names in _imports(path):
            if module.startswith("hwnas.cli") and not rel.startswith("hwnas/cli/"):
                offenders.append(f"{rel} imports {module}")
            submodules = {p.stem for p in root.iterdir()}
            if rel != "hwnas/__init__.py" and module == "hwnas" and (not names or set(names) - submodules):
                offenders.append(f"{rel} imports the package root ({', '.join(names) or 'hwnas'})")
        if rel != "hwnas/cache.py" and _names_the_cache_variable(path):
            offenders.append(f"{rel} decides where the cache is (hwnas.cache does)")
    assert not offenders, offenders


def test_version_has_one_home():
    import tomllib
    from pathlib import Path

    from hwnas._version import __version__

    pyproject = tomllib.loads((Path(hwnas.__file__).parents[1] / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "hwnas._version.__version__"}
    assert hwnas.__version__ == __version__
