"""GPU acceptance: what hwnas does on a GPU, in stages chosen by what the machine has, within a budget.

    PYTHONPATH=. python3 benchmarks/gpu_acceptance.py --budget 8 --out OUT

Stages (each in its own process, killed at its share of the budget):
  self_check        hwnas env --check --json: every GPU path the machine can run against an
                    independent reference (kernels in fp32/fp16/bf16, fused layer, timing,
                    TensorRT, NCCL); its report is OUT/selfcheck.json
  environment       GPU, driver, torch and its CUDA, cuda-bindings, NVRTC, TensorRT
  kernel_tests      pytest -m gpu (the kernels' CUDA path, NVRTC compile included)      [CUDA]
  search_ddp        the data-parallel search's GPU test: DDP, global batch norms, fused  [CUDA]
  fused_bench       fused multi-branch cell vs eager and torch.compile, fwd+bwd, batch 16 [CUDA]
  kernel_bandwidth  mixed-depthwise kernel's bandwidth vs a device-to-device copy         [CUDA]
  torch_table       latency19 table at batch 16, torch backend on the GPU (CUDA events)  [CUDA]
  torch_validate    that table's prediction vs whole networks on a random sample         [CUDA]
  torch_transfer    the shipped CPU table transferred to torch on the GPU from a tenth    [CUDA]
                    of its entries (hwnas table transfer), validated, vs torch_table's
  trt_engines       NSENet-GPU -> ONNX -> TensorRT engines FP32 and FP16, benchmarked    [TensorRT]
  trt_table         latency19 table through TensorRT and its validation                  [TensorRT]
--budget MINUTES sizes the work: each stage gets a share of the time left (positions, rounds,
samples follow from it) and is stopped at its deadline; a stage that cannot fit is skipped
with the reason. OUT/report.json and OUT/report.md are rewritten whole after every stage, so
a run killed at any point keeps what it measured. Needs only torch, numpy, onnx, onnxruntime,
tabulate, tqdm and (for the kernels) cuda-bindings; installs nothing, uses no network.
The targets (fused >= 1.5x eager and >= 1.0x torch.compile, kernel >= 50% of copy bandwidth,
>= 90% of validated networks within 10%) are reported, not enforced: they are benchmarks.

Exit status: 0 every stage that ran passed; 1 a stage failed or ran out of its time;
2 usage error; 4 no CUDA GPU, so nothing but the environment and the CPU paths were checked (the
report says which stages were skipped and why).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()
NO_GPU_EXIT = 4


# --- the plan: stages, what they need, their share of the budget --------------------------------

@dataclass(frozen=True)
class Stage:
    name: str
    needs: str  # "" (always), "cuda", "cuda+pytest" or "tensorrt"
    weight: float  # share of the time left, relative to the other stages still to run
    min_s: float  # with less time than this the stage is skipped
    what: str


STAGES = [
    Stage("self_check", "", 2.0, 20, "hwnas env --check: every GPU path against an independent reference"),
    Stage("environment", "", 0.5, 10, "GPU, driver and software versions; hwnas env"),
    Stage("kernel_tests", "cuda", 1.5, 45, "pytest -m gpu: the kernels' CUDA path against the CPU twin"),
    Stage("search_ddp", "cuda+pytest", 1.2, 40, "two processes on one GPU (gloo) train a search round as one process does"),
    Stage("fused_bench", "cuda", 2.2, 30, "fused cell vs eager and torch.compile, fwd+bwd, batch 16"),
    Stage("kernel_bandwidth", "cuda", 0.5, 10, "mixed-depthwise kernel vs device-to-device copy bandwidth"),
    Stage("torch_table", "cuda", 2.6, 60, "latency19 table, torch backend on the GPU, batch 16"),
    Stage("torch_validate", "cuda", 1.6, 30, "that table vs whole networks on a random sample"),
    Stage("torch_transfer", "cuda", 1.4, 40, "the shipped CPU table transferred to torch on the GPU, validated"),
    Stage("trt_engines", "tensorrt", 2.4, 60, "NSENet-GPU engines FP32/FP16, built and benchmarked"),
    Stage("trt_table", "tensorrt", 4.0, 600, "latency19 table through TensorRT and its validation"),
]
TABLE_ENTRIES = 191  # latency19 ops x distinct positions of the latency macro-architecture, batch 16


def fused_params(seconds: float) -> dict[str, Any]:
    """Positions timed and whether torch.compile is among the variants (it compiles ~30 s per cell)."""
    compile_too = seconds >= 60
    per_position = 35.0 if compile_too else 8.0
    return {"positions": max(1, min(4, int(seconds // per_position))), "compile": compile_too, "rounds": 7,
            "seconds": round(seconds)}


def table_params(seconds: float, entries: int = TABLE_ENTRIES) -> dict[str, Any]:
    """Rounds per entry so that the build fits: an entry costs ~0.25 s of set-up and warm-up plus
    one sample of >= 5 ms per round (and the calibration networks ~10 s); the reference network
    timed in every round adds about one entry per round."""
    per_entry = max(0.0, seconds - 15) / entries
    rounds = int((per_entry - 0.25) / 0.01)
    return {"rounds": max(3, min(9, rounds))}


def validate_params(seconds: float) -> dict[str, Any]:
    """Sample size: a network costs ~2 s (build, warm-up, 3 rounds, its share of the reference)."""
    return {"samples": max(5, min(50, int(seconds // 2.0))), "rounds": 3}


def trt_table_params(seconds: float, entries: int = TABLE_ENTRIES) -> dict[str, Any]:
    """A TensorRT engine takes seconds to build: the table is built whole or not at all."""
    return {"rounds": 5, "samples": max(5, min(20, int((seconds - entries * 2.5) // 3)))}


TRANSFER_ENTRY_S, TRANSFER_ROUND_S = 0.25, 0.02


def transfer_params(seconds: float, entries: int = TABLE_ENTRIES) -> dict[str, Any]:
    """A tenth of the entries measured (each ~TRANSFER_ENTRY_S of set-up plus, per round, a >= 5 ms
    sample of it and, at worst one group per entry, the reference network's primed sample), the
    calibration networks (~10 s), then the rest of the time validating (~2 s a network)."""
    measured = entries // 10
    rounds = max(3, min(9, int(((seconds / 2 - 15) / measured - TRANSFER_ENTRY_S) / TRANSFER_ROUND_S)))
    left = seconds - 15 - measured * (TRANSFER_ENTRY_S + TRANSFER_ROUND_S * rounds)
    return {"budget": 0.1, "rounds": rounds, "samples": max(4, min(30, int(left // 2.0))), "validate_rounds": 3}


def self_check_params(seconds: float) -> dict[str, Any]:
    """The check's own budget: the stage's share less the time to start its process."""
    return {"budget_s": max(5, int(seconds - 10))}


PARAMS: dict[str, Callable[[float], dict[str, Any]]] = {
    "self_check": self_check_params, "fused_bench": fused_params, "torch_table": table_params,
    "torch_validate": validate_params, "torch_transfer": transfer_params, "trt_table": trt_table_params,
}


def share(stage: Stage, left_s: float, to_run: list[Stage]) -> float:
    """This stage's seconds: its weight's share of the time left among the stages still to run."""
    total = sum(s.weight for s in to_run)
    return left_s * stage.weight / total if total else left_s


def capabilities() -> dict[str, str | None]:
    """For each need, None when the machine has it, else why not. Starts no CUDA context."""
    reasons: dict[str, str | None] = {"": None}
    try:
        import torch
    except ImportError:
        reasons["cuda"] = "torch is not installed"
    else:
        reasons["cuda"] = None if torch.cuda.is_available() else \
            "no CUDA GPU: torch.cuda.is_available() is False"
    try:
        import tensorrt
        ok = hasattr(tensorrt, "Builder")
    except ImportError:
        ok = False
    reasons["tensorrt"] = reasons["cuda"] or (None if ok else "TensorRT is not installed (pip install tensorrt)")
    import importlib.util

    reasons["cuda+pytest"] = reasons["cuda"] or (None if importlib.util.find_spec("pytest") else
                                                 "pytest is not installed (the stage runs a pytest test)")
    return reasons


# --- running the stages and keeping the report --------------------------------------------------

def write_whole(path: Path, text: str) -> None:
    """The report is replaced whole (temporary file + rename): a kill never leaves half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(out: Path, report: dict[str, Any]) -> None:
    write_whole(out / "report.json", json.dumps(report, indent=1) + "\n")
    write_whole(out / "report.md", markdown(report))


def markdown(report: dict[str, Any]) -> str:
    from tabulate import tabulate

    env = next((s.get("result") for s in report["stages"] if s["name"] == "environment"), None) or {}
    lines = ["# hwnas GPU acceptance", "",
             f"Budget {report['budget_min']} min, started {report['started']}, "
             f"{report.get('elapsed_s', 0):.0f} s so far; {report['state']}.", ""]
    if env:
        lines += [f"GPU: {env.get('gpu') or 'none'}; driver {env.get('driver')}; torch {env.get('torch')} "
                  f"(CUDA {env.get('torch_cuda')}); cuda-bindings {env.get('cuda_bindings')}; "
                  f"NVRTC {env.get('nvrtc')}; TensorRT {env.get('tensorrt')}.", ""]
    rows = [[s["name"], s["status"], s.get("seconds", ""), s.get("reason", "") or summary(s.get("result"))]
            for s in report["stages"]]
    lines += [tabulate(rows, ["stage", "status", "seconds", "figures / reason"], tablefmt="github"), ""]
    checks = report.get("checks", [])
    if checks:
        lines += ["## Figures against their targets (benchmarks, not pass/fail)", "",
                  tabulate([[c["what"], c["target"], c["value"], "yes" if c["ok"] else "no"] for c in checks],
                           ["figure", "target", "measured", "reaches it"], tablefmt="github"), ""]
    return "\n".join(lines)


def summary(result: Any) -> str:
    if not isinstance(result, dict):
        return ""
    keys = ("passed", "failed", "skipped", "speedup_vs_eager", "speedup_vs_compile", "copy_fraction", "entries",
            "complete", "within_10pct", "spearman", "mape", "fp32_median_ms", "fp16_median_ms")
    return ", ".join(f"{k} {result[k]}" for k in keys if k in result)


def targets(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The performance targets, checked on whatever figures the stages that passed produced."""
    results = {s["name"]: s.get("result") or {} for s in stages if s["status"] == "passed"}
    checks = []

    def add(what: str, target: str, value: Any, ok: bool) -> None:
        checks.append({"what": what, "target": target, "value": value, "ok": bool(ok)})

    fused = results.get("fused_bench", {})
    if "speedup_vs_eager" in fused:
        add("fused cell fwd+bwd vs eager (geometric mean)", ">= 1.5x", fused["speedup_vs_eager"],
            fused["speedup_vs_eager"] >= 1.5)
    if fused.get("speedup_vs_compile") is not None:
        add("fused cell fwd+bwd vs torch.compile", ">= 1.0x", fused["speedup_vs_compile"],
            fused["speedup_vs_compile"] >= 1.0)
    bandwidth = results.get("kernel_bandwidth", {})
    if "copy_fraction" in bandwidth:
        add("mixed-depthwise bandwidth / copy bandwidth", ">= 50%", bandwidth["copy_fraction"],
            bandwidth["copy_fraction"] >= 0.5)
    for name in ("torch_validate", "torch_transfer", "trt_table"):
        val = results.get(name, {})
        if "within_10pct" in val:
            add(f"{name}: networks within 10% of the table's prediction", ">= 90%", val["within_10pct"],
                val["within_10pct"] >= 0.9)
    return checks


RUNNING: list[int] = []  # the process group of the stage being run
# The benchmark times the fused kernels themselves: no first-use check, no fallback (their
# correctness is the self_check and kernel_tests stages' question).
STAGE_ENV = {"fused_bench": {"HWNAS_FUSED": "force"}}


def stop_on_term(signum: int, frame: Any) -> None:
    """Terminated (a time limit around the whole run): stop the stage's process group too, which
    runs detached from ours, and leave the report as it is (the stage marked running)."""
    for pid in RUNNING:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    raise SystemExit(128 + signum)


def stage_command(stage: Stage, params: dict[str, Any], out: Path) -> list[str]:
    """A stage runs as this script with --stage NAME, writing OUT/stages/NAME.json."""
    return [sys.executable, str(SCRIPT), "--stage", stage.name, "--params", json.dumps(params), "--out", str(out)]


def run_stage(stage: Stage, seconds: float, params: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run `--stage NAME` in its own process group; kill the whole group at the deadline."""
    result_file = out / "stages" / f"{stage.name}.json"
    result_file.unlink(missing_ok=True)
    log = out / "logs" / f"{stage.name}.log"
    cmd = stage_command(stage, params, out)
    start = time.monotonic()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           **STAGE_ENV.get(stage.name, {})}
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
        RUNNING[:] = [proc.pid]
        try:
            rc = proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the stage and its children (pytest, compile workers)
            proc.wait()
            rc = None
        finally:
            RUNNING.clear()
    entry: dict[str, Any] = {"seconds": round(time.monotonic() - start, 1), "log": str(log.relative_to(out))}
    if result_file.exists():
        entry["result"] = json.loads(result_file.read_text())
    if rc is None:
        entry.update(status="timed_out", reason=f"stopped at its share of the budget ({seconds:.0f} s)")
    elif rc != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        entry.update(status="failed", reason=f"exit {rc}: {tail[0][:300]}")
    else:
        entry["status"] = "passed"
    return entry


def run_stages(stages: list[Stage], out: Path, budget_min: float, needs: dict[str, str | None]) -> int:
    """Run the stages the machine can run, each within its share of the budget; the exit status."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "stages").mkdir(exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    start = time.monotonic()
    deadline = start + budget_min * 60
    report: dict[str, Any] = {"budget_min": budget_min, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                              "state": "running", "stages": [], "checks": []}
    budget_s = budget_min * 60
    reasons = {s.name: needs.get(s.needs) or (f"needs >= {s.min_s / 60:.0f} min alone, the budget is "
                                                  f"{budget_min:g} min (raise --budget)" if s.min_s > budget_s else None)
               for s in stages}
    runnable = [s for s in stages if reasons[s.name] is None]
    for stage in stages:
        why = reasons[stage.name]
        entry: dict[str, Any] = {"name": stage.name, "what": stage.what}
        report["stages"].append(entry)
        if why is not None:
            entry.update(status="skipped", reason=why)
            continue
        to_run = runnable[runnable.index(stage):]
        seconds = min(share(stage, deadline - time.monotonic(), to_run), deadline - time.monotonic())
        if seconds < stage.min_s:
            entry.update(status="skipped", reason=f"the budget leaves {max(seconds, 0):.0f} s, it needs "
                                                  f">= {stage.min_s:.0f} s (raise --budget)")
            continue
        params = PARAMS[stage.name](seconds) if stage.name in PARAMS else {}
        entry.update(status="running", budget_s=round(seconds, 1), params=params)
        report["elapsed_s"] = time.monotonic() - start
        write_report(out, report)  # a kill now leaves the stage marked as running
        print(f"== {stage.name} ({seconds:.0f} s): {stage.what}", flush=True)
        entry.update(run_stage(stage, seconds, params, out))
        print(f"   {entry['status']} in {entry['seconds']} s {entry.get('reason', '')}", flush=True)
        report["checks"] = targets(report["stages"])
        report["elapsed_s"] = time.monotonic() - start
        write_report(out, report)
    ran = [s for s in report["stages"] if s["status"] != "skipped"]
    bad = [s["name"] for s in ran if s["status"] != "passed"]
    no_gpu = needs.get("cuda") is not None
    report["state"] = ("failed: " + ", ".join(bad)) if bad else (
        "no CUDA GPU: only the environment and the CPU paths were checked" if no_gpu else "every stage that ran passed")
    report["elapsed_s"] = time.monotonic() - start
    write_report(out, report)
    print(f"report: {out / 'report.md'}; {report['state']}")
    return 1 if bad else (NO_GPU_EXIT if no_gpu else 0)


# --- the stages themselves (run in a child process: `--stage NAME`) -----------------------------

def stage_self_check(params: dict[str, Any], out: Path) -> dict[str, Any]:
    """hwnas env --check --json, its whole report kept as OUT/selfcheck.json; fails when a path fails."""
    proc = subprocess.run([sys.executable, "-m", "hwnas.cli.main", "env", "--check", "--json", "--budget",
                           str(params["budget_s"]), "-o", str(out / "selfcheck.json")], capture_output=True,
                          text=True, cwd=REPO)
    print(proc.stdout[-20000:], proc.stderr[-5000:], sep="\n")
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"hwnas env --check exited {proc.returncode} without a report: "
                         f"{(proc.stderr or proc.stdout).strip()[-300:]}") from None
    result = {"passed": report["passed"], "failed": report["failed"], "skipped": report["skipped"],
              "report": "selfcheck.json",
              "paths": {p["name"]: p["status"] if p["status"] != "failed" else f"failed: {p['detail']}"
                        for p in report["paths"]}}
    if proc.returncode != 0:
        write_result(out, "self_check", result)
        raise SystemExit("hwnas env --check: " + "; ".join(f"{p['name']}: {p['detail']}" for p in report["paths"]
                                                          if p["status"] == "failed"))
    return result


def stage_environment(params: dict[str, Any], out: Path) -> dict[str, Any]:
    import importlib.metadata
    import shutil

    import torch

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    info: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__,
                            "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                            "cuda_bindings": version("cuda-bindings") or version("cuda-python"),
                            "gpu": None, "driver": None, "nvrtc": None, "tensorrt": None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=f"sm_{props.major}{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), gpus=torch.cuda.device_count())
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True)
        info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
    try:
        from cuda.bindings import nvrtc

        err, major, minor = nvrtc.nvrtcVersion()
        info["nvrtc"] = f"{major}.{minor}" if int(err) == 0 else None
    except Exception as exc:  # noqa: BLE001 - any loader failure is reported, not raised
        info["nvrtc"] = f"unavailable ({type(exc).__name__}: {exc})"[:200]
    try:
        import tensorrt

        info["tensorrt"] = getattr(tensorrt, "__version__", None) if hasattr(tensorrt, "Builder") else None
    except ImportError:
        pass
    # hwnas's own view (NVRTC headers found, compiler, what is missing); exit 1 only says something is
    env = subprocess.run([sys.executable, "-m", "hwnas.cli.main", "env", "--json"], capture_output=True, text=True,
                         cwd=REPO)
    try:
        info["hwnas_env"] = json.loads(env.stdout)
    except json.JSONDecodeError:
        info["hwnas_env"] = {"error": (env.stderr or env.stdout).strip()[-300:]}
    return info


def stage_kernel_tests(params: dict[str, Any], out: Path) -> dict[str, Any]:
    import importlib.util

    if importlib.util.find_spec("pytest") is None:  # a bare GPU machine: call the gpu tests by hand
        result = run_gpu_tests(REPO / "tests" / "test_kernels.py")
        if result["failed"]:
            write_result(out, "kernel_tests", result)
            raise SystemExit(f"gpu tests failed: {result['failures']}")
        return result
    return gpu_pytest(out, "kernel_tests", ["tests/", f"--ignore={DDP_TESTS}"])


DDP_TESTS = "tests/test_data_parallel.py"  # its own stage: three processes, its own share of the budget


def gpu_pytest(out: Path, stage: str, paths: list[str]) -> dict[str, Any]:
    """pytest -m gpu on the paths; the counts, or SystemExit when a test failed."""
    import re

    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *paths],
                          capture_output=True, text=True, cwd=REPO)
    print(proc.stdout[-20000:], proc.stderr[-5000:], sep="\n")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", proc.stdout)}
    result = {"passed": counts.get("passed", 0), "failed": counts.get("failed", 0) + counts.get("error", 0)
              + counts.get("errors", 0), "skipped": counts.get("skipped", 0), "returncode": proc.returncode}
    if proc.returncode != 0:
        write_result(out, stage, result)
        raise SystemExit(f"pytest -m gpu exited {proc.returncode}: {result}")
    return result


def stage_search_ddp(params: dict[str, Any], out: Path) -> dict[str, Any]:
    return gpu_pytest(out, "search_ddp", [DDP_TESTS])


def pytest_stand_in() -> Any:
    """Enough of pytest to import a test module and find its gpu tests and their parameter grids:
    marks are recorded on the functions, nothing else is done."""
    import types

    def mark(name: str) -> Callable[..., Any]:
        def use(*args: Any, **kwargs: Any) -> Any:
            if name == "parametrize":
                def grid(fn: Any) -> Any:
                    fn.__dict__.setdefault("grid", []).append(([n.strip() for n in args[0].split(",")], list(args[1])))
                    return fn
                return grid
            if name == "skipif":
                def skipif(fn: Any) -> Any:
                    if args[0]:
                        fn.skip = kwargs.get("reason", "skipped")
                    return fn
                return skipif
            fn = args[0]  # a bare mark: @pytest.mark.gpu
            fn.__dict__.setdefault("marks", set()).add(name)
            return fn
        return use

    module: Any = types.ModuleType("pytest")
    module.mark = types.SimpleNamespace(**{n: mark(n) for n in ("gpu", "parametrize", "skipif")})
    module.fixture = lambda *a, **k: a[0] if a and callable(a[0]) else (lambda fn: fn)
    return module


def run_gpu_tests(path: Path, call: bool = True) -> dict[str, Any]:
    """Call every gpu-marked test of `path` over its parameter grid; count passes and failures
    (call=False: only list the cases)."""
    import importlib
    import itertools
    import traceback

    sys.modules.setdefault("pytest", pytest_stand_in())
    sys.path.insert(0, str(path.parent))
    module = importlib.import_module(path.stem)
    passed, failures, cases = 0, [], []
    for name, fn in vars(module).items():
        if not (name.startswith("test_") and "gpu" in getattr(fn, "marks", ())):
            continue
        grids = getattr(fn, "grid", [])
        for combo in itertools.product(*[list(zip([names] * len(values), values)) for names, values in grids]):
            kwargs: dict[str, Any] = {}
            for names, value in combo:
                kwargs.update(zip(names, value if len(names) > 1 else (value,)))
            cases.append(f"{name}{kwargs}")
            if not call:
                continue
            try:
                fn(**kwargs)
                passed += 1
            except Exception:  # noqa: BLE001 - a failing test is counted and reported
                failures.append(f"{name}{kwargs}: {traceback.format_exc(limit=1).strip().splitlines()[-1]}")
                print(failures[-1], flush=True)
    return {"passed": passed, "failed": len(failures), "skipped": 0, "failures": failures[:10], "cases": len(cases),
            "runner": "gpu tests called directly (pytest is not installed)"}


def stage_fused_bench(params: dict[str, Any], out: Path) -> dict[str, Any]:
    sys.path.insert(0, str(SCRIPT.parent))
    import bench_multibranch as bm
    import torch

    from hwnas.spaces import builtin

    space = builtin().spaces["latency19"]
    device, batch = params.get("device", "cuda"), params.get("batch", 16)  # others only in the script's tests
    rows = []
    start = time.monotonic()
    for pos in bm.SHAPES[:params["positions"]]:
        begin = time.monotonic()
        rows.append(bm.bench_position(space, pos, device, batch, bm.bench_protocol(params["rounds"]), params["compile"]))
        write_result(out, "fused_bench", {"rows": rows})  # partial figures survive a timeout
        print(json.dumps(rows[-1]), flush=True)
        if time.monotonic() - start + (time.monotonic() - begin) > 0.9 * params["seconds"]:
            break  # the next position would not fit in this stage's time

    def geomean(key: str) -> float | None:
        vals = [r[key] for r in rows if key in r]
        return round(math.exp(sum(math.log(v) for v in vals) / len(vals)), 3) if vals else None

    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    return {"batch": batch, "device": name, "speedup_vs_eager": geomean("speedup_vs_eager"),
            "speedup_vs_compile": geomean("speedup_vs_compile"), "rows": rows}


def stage_kernel_bandwidth(params: dict[str, Any], out: Path) -> dict[str, Any]:
    import torch

    from hwnas.kernels import SegmentSpec, mixed_depthwise

    def gpu_ms(fn: Callable[[], Any], iterations: int = 20) -> float:
        fn()
        torch.cuda.synchronize()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(iterations):
            fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / iterations

    rows: list[dict[str, Any]] = []
    for dtype in (torch.float32, torch.float16):
        # a latency19 hidden tensor: 64 channels x T=6 per branch, k 3/5/7, at 56x56, batch 16
        segments = [SegmentSpec(384, k, 1, 1) for k in (3, 5, 7)]
        x = torch.randn(16, sum(s.channels for s in segments), 56, 56, device="cuda", dtype=dtype)
        flat = torch.randn(sum(s.channels * s.kernel**2 for s in segments), device="cuda", dtype=dtype)
        src, dst = torch.empty_like(x), torch.empty_like(x)
        kernel_ms: list[float] = []
        copy_ms: list[float] = []
        for _ in range(7):  # interleaved rounds, medians: both see the same clocks
            kernel_ms.append(gpu_ms(lambda: mixed_depthwise(x, flat, segments)))
            copy_ms.append(gpu_ms(lambda: dst.copy_(src)))
        kernel, copy = sorted(kernel_ms)[3], sorted(copy_ms)[3]
        size = x.element_size()
        moved = (2 * x.numel() + flat.numel()) * size  # read h and the weights, write the outputs
        kernel_gbps, copy_gbps = moved / kernel / 1e6, 2 * x.numel() * size / copy / 1e6
        rows.append({"dtype": str(dtype).removeprefix("torch."), "kernel_ms": round(kernel, 4),
                     "copy_ms": round(copy, 4), "kernel_gbps": round(kernel_gbps, 1), "copy_gbps": round(copy_gbps, 1),
                     "copy_fraction": round(kernel_gbps / copy_gbps, 3)})
        print(json.dumps(rows[-1]), flush=True)
    return {"copy_fraction": min(float(r["copy_fraction"]) for r in rows), "rows": rows}


def table_path(out: Path, backend: str) -> Path:
    return out / f"latency19_{backend}-cuda_b16.json"


def hwnas(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "hwnas.cli.main", *args], cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"hwnas {' '.join(args[:2])} exited {proc.returncode}")


def stage_torch_table(params: dict[str, Any], out: Path) -> dict[str, Any]:
    from hwnas.profiling.table import Table

    path = table_path(out, "torch")
    hwnas("table", "build", "--space", "latency19", "--macro", "latency", "--backend", "torch", "--batch", "16",
          "--rounds", str(params["rounds"]), "--quiet", "--resume", "-o", str(path))
    table = Table.load(path)
    return {"table": path.name, "entries": len(table.entries), "complete": bool(table.meta.get("complete")),
            "device": table.meta.get("device"), "rounds": params["rounds"]}


def validation(table: Path, params: dict[str, Any], out: Path, name: str) -> dict[str, Any]:
    report = out / f"{name}.json"
    hwnas("validate", "--table", str(table), "--samples", str(params["samples"]), "--rounds", str(params["rounds"]),
          "--quiet", "-o", str(report))
    data = json.loads(report.read_text())
    return {k: data[k] for k in ("n", "within_10pct", "mape", "spearman") if k in data} | {"report": report.name}


def stage_torch_validate(params: dict[str, Any], out: Path) -> dict[str, Any]:
    table = table_path(out, "torch")
    if not table.exists():
        raise SystemExit("no torch table to validate (the torch_table stage did not finish)")
    return validation(table, params, out, "torch_validation")


SHIPPED_TABLE = REPO / "latency_tables" / "latency19_ort-cpu_b16.json"


def transfer_command(params: dict[str, Any], path: Path) -> list[str]:
    """`hwnas table transfer` of the shipped CPU table to torch on this GPU."""
    return ["table", "transfer", "--from", str(SHIPPED_TABLE), "--backend", "torch", "--budget", str(params["budget"]),
            "--rounds", str(params["rounds"]), "--quiet", "--resume", "-o", str(path)]


def stage_torch_transfer(params: dict[str, Any], out: Path) -> dict[str, Any]:
    from hwnas.profiling.table import Table

    path = out / "latency19_torch-cuda_b16.transferred.json"
    hwnas(*transfer_command(params, path))
    table = Table.load(path)
    held = table.meta["transfer"]["model"]["held_out"]
    result: dict[str, Any] = {"table": path.name, "entries": len(table.entries),
                              "measured": len(table.entries) - len(table.transferred),
                              "held_out_mape": held["mape"], "seconds": table.meta["transfer"].get("seconds")}
    full = table_path(out, "torch")
    if full.exists() and Table.load(full).meta.get("complete"):  # the torch_table stage's full build
        built = Table.load(full)  # compared as ratios to the reference network both tables time
        errors = [abs(table.ratio(k) / built.ratio(k) - 1) for k in table.transferred]
        result["entry_mape_vs_full"] = round(sum(errors) / len(errors), 4)
        result["entry_within_10pct_vs_full"] = round(sum(e <= 0.1 for e in errors) / len(errors), 4)
    write_result(out, "torch_transfer", result)  # kept if the validation runs out of time
    return result | validation(path, {"samples": params["samples"], "rounds": params["validate_rounds"]}, out,
                               "torch_transfer_validation")


def stage_trt_engines(params: dict[str, Any], out: Path) -> dict[str, Any]:
    from hwnas.profiling.backends.tensorrt import fp16_onnx_for, trt_major

    result: dict[str, Any] = {}
    for precision in ("fp32", "fp16"):
        half = precision == "fp16"
        onnx = out / f"nsenet_gpu_{precision}.onnx"
        plan = out / f"nsenet_gpu_{precision}.plan"
        hwnas("export", "onnx", "nsenet_gpu", "--reparam", "-o", str(onnx),
              *(["--fp16"] if half and fp16_onnx_for(trt_major()) else []))
        hwnas("export", "engine", str(onnx), "-o", str(plan), *(["--fp16"] if half else []),
              "--timing-cache", str(out / "timing.cache"), "--json")
        bench = out / f"bench_{precision}.json"
        with open(bench, "w") as f:
            proc = subprocess.run([sys.executable, "-m", "hwnas.cli.main", "bench", str(plan), "--backend", "tensorrt",
                                   "--batch", "16", "--duration-s", "2", "--json"], cwd=REPO, stdout=f)
        if proc.returncode != 0:
            raise SystemExit(f"hwnas bench {plan.name} exited {proc.returncode}")
        data = json.loads(bench.read_text())
        result[f"{precision}_median_ms"] = data["latency_ms"]["median"]
        result[f"{precision}_engine_precision"] = data.get("engine_precision")
        write_result(out, "trt_engines", result)
    return result


def stage_trt_table(params: dict[str, Any], out: Path) -> dict[str, Any]:
    path = table_path(out, "tensorrt")
    hwnas("table", "build", "--space", "latency19", "--macro", "latency", "--backend", "tensorrt", "--batch", "16",
          "--rounds", str(params["rounds"]), "--quiet", "--resume", "-o", str(path))
    return validation(path, params, out, "tensorrt_validation")


def write_result(out: Path, name: str, result: dict[str, Any]) -> None:
    write_whole(out / "stages" / f"{name}.json", json.dumps(result, indent=1) + "\n")


def run_one(name: str, params: dict[str, Any], out: Path) -> int:
    result = globals()[f"stage_{name}"](params, out)
    write_result(out, name, result)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=8.0, metavar="MINUTES",
                    help="wall-clock minutes for the whole run (default 8)")
    ap.add_argument("--out", default="gpu_acceptance", help="folder of the report, tables, engines and logs")
    ap.add_argument("--stage", choices=[s.name for s in STAGES], help=argparse.SUPPRESS)  # a child's one stage
    ap.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.budget > 0:
        ap.error("--budget must be a positive number of minutes")
    out = Path(args.out).resolve()  # the stages run from the repository root
    if args.stage:
        return run_one(args.stage, json.loads(args.params), out)
    signal.signal(signal.SIGTERM, stop_on_term)
    return run_stages(STAGES, out, args.budget, capabilities())


if __name__ == "__main__":
    sys.exit(main())
