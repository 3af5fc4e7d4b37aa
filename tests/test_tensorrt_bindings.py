"""hwnas's TensorRT code against NVIDIA's real Python bindings of each checked release.

TensorRT's libraries need an NVIDIA GPU, but its bindings import over stand-in libraries
(tests/trt_bindings.py), which is enough to hold hwnas's code against the real API of the
oldest supported 10.x, the newest 10.x, 11.0 and the newest 11.x:
- every use of the `tensorrt` module in hwnas's source (tests/trt_uses.py walks the syntax
  trees: attributes, enum members, methods of the objects TensorRT returns, call arguments)
  resolves in each release under which it runs (tests/trt_resolve.py), and none is deprecated
  there;
- mypy type-checks the TensorRT code against stubs generated from each release's module;
- a branch guarded by the TensorRT major (`if major < 11:`) is checked against the releases
  of that major only.
Negative controls run the same checks on mutated copies of the backend.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO
from trt_bindings import VERSIONS, Bindings, bindings, run_mypy
from trt_stubs import mypy_available
from trt_uses import ALL_MAJORS, Use, source_uses, tensorrt_modules, unique

pytestmark = pytest.mark.slow

BACKEND = REPO / "hwnas" / "profiling" / "backends" / "tensorrt.py"
BACKEND_MODULE = "hwnas.profiling.backends.tensorrt"


@pytest.fixture(scope="module")
def code() -> dict[Path, list[Use]]:
    """hwnas's modules that import TensorRT, with their uses of it."""
    return tensorrt_modules(REPO / "hwnas")


@pytest.fixture(scope="module", params=VERSIONS)
def release(request) -> Bindings:
    return bindings(request.param)


def mutant(old: str, new: str) -> str:
    source = BACKEND.read_text()
    assert old in source, f"the backend no longer contains {old!r}: update this control"
    return source.replace(old, new)


# Negative controls: mutated copies of the backend, and the majors on which (resolver, mypy) must fail them.
MUTANTS = {
    # an API removed in TensorRT 11, used without its guard
    "unguarded_fp16_flag": (lambda: mutant('if major < 11 and mode == "fp16_flag":', 'if mode == "fp16_flag":'),
                            {11}, {11}),
    # a property removed in 11, reached through the Builder object
    "removed_property": (lambda: mutant("    config = builder.create_builder_config()\n",
                                        "    config = builder.create_builder_config()\n"
                                        "    assert builder.platform_has_fast_fp16\n"), {11}, {11}),
    # deprecated (and ignored) in 11, used without its guard: mypy cannot see deprecation, the resolver can
    "unguarded_strongly_typed": (lambda: mutant('if major < 11 and mode == "strongly_typed":',
                                                'if mode == "strongly_typed":'), {11}, set()),
    # misspelt: an enum member, a method, a keyword argument
    "misspelt_member": (lambda: mutant("trt.TensorIOMode.INPUT", "trt.TensorIOMode.INPT"), {10, 11}, {10, 11}),
    "misspelt_method": (lambda: mutant(".execute_async_v3(", ".execute_async_v4("), {10, 11}, {10, 11}),
    "misspelt_keyword": (lambda: mutant("ignore_mismatch=False", "ignore_missmatch=False"), {10, 11}, {10, 11}),
}


@pytest.fixture(scope="module")
def sources(code, tmp_path_factory) -> dict[str, dict[Path, list[Use]]]:
    """What is checked: 'hwnas' (its TensorRT code), and each mutant (written to a file for mypy)."""
    found = {"hwnas": tensorrt_code_files(code)}
    folder = tmp_path_factory.mktemp("mutants")
    for name, (make, _, _) in MUTANTS.items():
        path = folder / f"{name}.py"
        path.write_text(make())
        found[name] = {path: source_uses(path.read_text(), path.name) or []}
    return found


@dataclass
class Verdict:
    unresolved: list[str]  # uses that run under the release and do not resolve there, or are deprecated
    reached: set[str]  # what the resolved uses reached ('method IExecutionContext.execute_async_v3'...)
    mypy: list[str]  # mypy's errors against the release's generated stubs


@pytest.fixture(scope="module")
def verdicts(release, sources, tmp_path_factory) -> dict[str, Verdict]:
    """Each source checked against one release: one resolver run and one mypy run for all of them."""
    runs = {name: [u for u in unique([u for uses in files.values() for u in uses]) if release.major in u.majors]
            for name, files in sources.items()}
    chains = [u.chain for uses in runs.values() for u in uses]
    answer = release.resolve(chains)
    assert answer["version"] == release.version
    results = iter(answer["results"])
    verdicts = {}
    for name, uses in runs.items():
        mine = [next(results) for _ in uses]
        verdicts[name] = Verdict([f"{u.where()}: {r['error'] or 'deprecated: ' + r['deprecated']}"
                                  for u, r in zip(uses, mine) if r["error"] or r["deprecated"]],
                                 {r["reached"] for r in mine if r["reached"]}, [])
    if mypy_available():
        stubs = release.stubs(tmp_path_factory.mktemp(f"stubs-{release.version}"))
        files = {path: uses for found in sources.values() for path, uses in found.items()}
        errors = mypy_errors(release, stubs, files)
        for name, found in sources.items():
            paths = {path.resolve() for path in found}
            verdicts[name].mypy = [e for e in errors if Path(e.split(":", 1)[0]).resolve() in paths]
    return verdicts


def mypy_errors(release: Bindings, stubs: Path, files: dict[Path, list[Use]]) -> list[str]:
    """mypy's errors on `files`, less those on lines whose every TensorRT use runs under other majors."""
    proc = run_mypy(stubs, list(files), REPO / "pyproject.toml")
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr  # 2: mypy itself failed
    other_major = {(p.resolve(), u.line) for p, uses in files.items() for u in uses if release.major not in u.majors}
    this_major = {(p.resolve(), u.line) for p, uses in files.items() for u in uses if release.major in u.majors}
    errors = []
    for line in proc.stdout.splitlines():
        match = re.match(r"^(.+?):(\d+): error:", line)
        if match:
            where = (Path(match.group(1)).resolve(), int(match.group(2)))
            if not (where in other_major and where not in this_major):
                errors.append(line)
    return errors


def tensorrt_code_files(code: dict[Path, list[Use]]) -> dict[Path, list[Use]]:
    """The modules that import TensorRT, and those that import the backend (engine export, bench)."""
    files = dict(code)
    for path in sorted((REPO / "hwnas").rglob("*.py")):
        if path not in files and re.search(rf"^\s*from {re.escape(BACKEND_MODULE)} import", path.read_text(), re.M):
            files[path] = []
    return files


# --- the bindings themselves -----------------------------------------------------------------

def test_the_real_bindings_import_over_the_standin_libraries(release):
    probe = ("import json, tensorrt; print(json.dumps([tensorrt.__version__, tensorrt.Builder.__module__, "
             "tensorrt.IBuilderConfig.set_timing_cache.__doc__.splitlines()[0]]))")
    proc = release.run(["-c", probe])
    assert proc.returncode == 0, proc.stderr
    version, module, signature = json.loads(proc.stdout)
    assert version == release.version
    assert module == "tensorrt_bindings.tensorrt"  # the compiled extension, not a stub
    assert "ignore_mismatch: bool) -> bool" in signature
    # negative control: without the stand-ins the extension cannot load (so they are what makes it import)
    proc = release.run(["-c", "import tensorrt"], libraries=False)
    assert proc.returncode != 0 and re.search(rf"libnv\w+\.so\.{release.major}", proc.stderr), proc.stderr


# --- every use resolves, and type-checks -------------------------------------------------------

def test_every_tensorrt_use_in_hwnas_resolves(release, verdicts):
    verdict = verdicts["hwnas"]
    assert not verdict.unresolved, f"TensorRT {release.version}:\n" + "\n".join(verdict.unresolved)
    # values are followed through what TensorRT returns: these methods are reached only that way
    for method in ("IBuilderConfig.set_timing_cache", "IExecutionContext.execute_async_v3",
                   "ICudaEngine.get_tensor_profile_shape", "EngineInspector.get_engine_information"):
        assert f"method {method}" in verdict.reached, sorted(verdict.reached)


@pytest.mark.skipif(not mypy_available(), reason="needs mypy (pip install mypy)")
def test_tensorrt_code_type_checks_against_each_release(release, sources, verdicts):
    assert BACKEND in sources["hwnas"] and REPO / "hwnas" / "export" / "engine.py" in sources["hwnas"]
    errors = verdicts["hwnas"].mypy
    assert not errors, f"TensorRT {release.version}:\n" + "\n".join(errors)


def test_version_guarded_branches_are_found_and_each_is_checked(code):
    uses = unique([u for path_uses in code.values() for u in path_uses])
    guarded = {u.text: u.majors for u in uses if u.guarded()}
    majors = {int(v.split(".")[0]) for v in VERSIONS}
    # every guarded use runs under at least one checked release (else it would go unchecked)
    assert all(m & majors for m in guarded.values()), guarded
    # the builder's TensorRT-10-only calls are seen as such
    for text in ("trt.BuilderFlag.FP16", "trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED"):
        assert text in guarded and 10 in guarded[text] and 11 not in guarded[text], guarded
    assert all(u.majors == ALL_MAJORS for u in uses if "execute_async_v3" in u.text)


# --- negative controls ---------------------------------------------------------------------------

def test_the_resolver_fails_the_mutants(release, verdicts):
    for name, (_, fails_on, _) in MUTANTS.items():
        unresolved = verdicts[name].unresolved
        assert bool(unresolved) == (release.major in fails_on), f"{name} on TensorRT {release.version}: {unresolved}"
    assert all("STRONGLY_TYPED" in u and "DEPRECATED" in u for u in verdicts["unguarded_strongly_typed"].unresolved)


@pytest.mark.skipif(not mypy_available(), reason="needs mypy (pip install mypy)")
def test_mypy_fails_the_mutants(release, verdicts):
    for name, (_, _, fails_on) in MUTANTS.items():
        errors = verdicts[name].mypy
        assert bool(errors) == (release.major in fails_on), f"{name} on TensorRT {release.version}: {errors}"
