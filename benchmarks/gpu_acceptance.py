"""GPU acceptance: everything hwnas does on a GPU, in one go, for the first user who has one.

    python benchmarks/gpu_acceptance.py [--out gpu_acceptance] [--samples 50]

1. the TensorRT latency19 table at batch 16 (FP32) and its validation (50 random architectures);
2. the fused kernel's GPU tests (pytest -m gpu) and its benchmark (CUDA path included);
3. NSENet-GPU exported to ONNX (FP32 and FP16), built into TensorRT engines, benchmarked,
   with the table's prediction beside each measurement;
4. one report: OUT/report.md and OUT/report.json.
Without a CUDA GPU and TensorRT it says so and exits 2, touching nothing. What has run on which
GPU: docs/gpu.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def gpu_missing() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU: torch.cuda.is_available() is False"
    try:
        import tensorrt
    except ImportError:
        return "TensorRT is not installed (pip install 'hwnas[gpu]')"
    if not hasattr(tensorrt, "Builder"):
        return "only TensorRT's type stubs are installed, not its libraries (pip install 'hwnas[gpu]')"
    return None


def run(step: str, cmd: list[str], log: dict[str, Any], out: Path) -> Any:
    print(f"== {step}: {' '.join(cmd)}", flush=True)
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    (out / f"{step}.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    entry: dict[str, Any] = {"command": " ".join(cmd), "returncode": proc.returncode,
                             "seconds": round(time.monotonic() - start, 1)}
    try:
        entry["result"] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        entry["tail"] = proc.stdout[-2000:]
    log[step] = entry
    print(f"   -> exit {proc.returncode} in {entry['seconds']} s", flush=True)
    return entry.get("result")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_acceptance")
    ap.add_argument("--samples", type=int, default=50)
    args = ap.parse_args()
    missing = gpu_missing()
    if missing:
        print(f"gpu_acceptance: cannot run here: {missing}. Nothing was done.", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    hw = [sys.executable, "-m", "hwnas.cli.main"]
    table = str(out / "latency19_tensorrt_b16.json")
    log: dict[str, Any] = {}
    run("table", [*hw, "table", "build", "--space", "latency19", "--macro", "latency", "--backend", "tensorrt",
                  "--batch", "16", "-o", table, "--resume"], log, out)
    run("validate", [*hw, "validate", "--table", table, "--samples", str(args.samples), "--json",
                     "--plot", str(out / "validation.png")], log, out)
    run("kernel_tests", [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/"], log, out)
    run("kernel_bench", [sys.executable, "benchmarks/bench_multibranch.py", "--json"], log, out)
    for precision in ("fp32", "fp16"):
        flag = ["--fp16"] if precision == "fp16" else []
        onnx = str(out / f"nsenet_gpu_{precision}.onnx")
        plan = str(out / f"nsenet_gpu_{precision}.plan")
        run(f"onnx_{precision}", [*hw, "export", "onnx", "nsenet_gpu", "-o", onnx, "--reparam", *flag, "--json"], log,
            out)
        run(f"engine_{precision}", [*hw, "export", "engine", onnx, "-o", plan, *flag, "--timing-cache",
                                    str(out / "timing.cache"), "--json"], log, out)
        run(f"bench_{precision}", [*hw, "bench", onnx, "--backend", "tensorrt", "--batch", "16", *flag,
                                   "--table", table, "--json"], log, out)
    (out / "report.json").write_text(json.dumps(log, indent=1) + "\n")
    lines = ["# hwnas GPU acceptance", "", "| step | exit | seconds | key figures |", "| --- | --- | --- | --- |"]
    for step, entry in log.items():
        result = entry.get("result") or {}
        keys = {k: result[k] for k in ("within_10pct", "spearman", "mape", "speedup_vs_eager", "throughput_ips",
                                       "cov", "predicted_ms", "prediction_error") if isinstance(result, dict) and k in result}
        if isinstance(result, dict) and "latency_ms" in result and isinstance(result["latency_ms"], dict):
            keys["median_ms"] = result["latency_ms"]["median"]
        lines.append(f"| {step} | {entry['returncode']} | {entry['seconds']} | {json.dumps(keys)} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    failed = [s for s, e in log.items() if e["returncode"]]
    print(f"report: {out / 'report.md'}; {'all steps passed' if not failed else 'failed: ' + ', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
