"""`hwnas env`: what hwnas sees for its GPU paths on the machine it runs on, in one place.

torch and the CUDA it was built for, the GPUs and the driver, cuda-bindings, NVRTC and where its
CUDA headers were found, TensorRT, and the C++ compiler of the kernels' CPU twin. With --compile
it also compiles every kernel through NVRTC, the path the fused layer takes on a GPU. With
--check it runs every GPU path the machine can run against an independent reference
(hwnas.selfcheck.check). The first command to run on a new GPU machine, and the one to quote in a
bug report.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

from hwnas.cli.options import SECONDS, add_json, add_number
from hwnas.cli.output import print_json, table
from hwnas.errors import HwnasError


@dataclass
class Piece:
    name: str
    ok: bool
    version: str = ""
    detail: str = ""
    needed: bool = True  # False: reported, but its absence is no error (TensorRT; the GPU with --compile)

    @property
    def status(self) -> str:
        if self.ok:
            return "ok"
        return "missing" if self.needed else "optional" if self.name == "TensorRT" else "not needed"


def register(sub: Any) -> None:
    env = sub.add_parser(
        "env", help="show what hwnas sees: torch, CUDA, NVRTC, TensorRT, GPUs, C++ compiler",
        description="Show the software and GPUs hwnas finds for its CUDA kernels and TensorRT engines: torch "
                    "and the CUDA it was built for, the GPUs and driver, cuda-bindings, NVRTC and the folder of "
                    "its CUDA headers, TensorRT, and the C++ compiler of the CPU twin of the kernels. Exits 1, "
                    "saying what to install, when a piece the GPU paths need is missing. With --compile, the "
                    "question is only whether the kernels compile: no GPU is needed then. With --check, every "
                    "GPU path the machine can run is run against an independent reference, and the exit status "
                    "is 1 when one fails.")
    what = env.add_mutually_exclusive_group()
    what.add_argument("--compile", metavar="ARCHS", type=_archs,
                      help="also compile every kernel with NVRTC for these GPU architectures (comma-separated, "
                           "e.g. sm_80,sm_90) and report each cubin's size")
    what.add_argument("--check", action="store_true",
                      help="run every GPU path the machine can run on small inputs against an independent "
                           "reference (the kernels against PyTorch's ops and autograd in each dtype, the fused "
                           "layer against the eager one, CUDA-event timing against wall clock, TensorRT against "
                           "onnxruntime, two GPUs over NCCL against one): one row per path, with its worst error "
                           "against its tolerance; paths it cannot run are listed with the reason. Exits 1 when "
                           "a path fails. Meant to take about a minute on a GPU")
    env.add_argument("-o", "--output", metavar="REPORT", help="with --check: write the whole report (machine, "
                     "versions, every path's numbers) to this JSON file, to attach to a bug report")
    add_number(env, "--budget", rng=SECONDS, default=None,
               help="with --check: stop starting paths once they no longer fit in this many seconds (the "
                    "paths left are reported as skipped)")
    add_json(env)
    env.set_defaults(func=cmd_env)


def _archs(text: str) -> list[str]:
    archs = [a.strip() for a in text.split(",") if a.strip()]
    if not archs or any(not a.startswith("sm_") or not a[3:].rstrip("a").isdigit() for a in archs):
        raise argparse.ArgumentTypeError(f"expected architectures like sm_80,sm_90, got {text!r}")
    return archs


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _torch(compile_only: bool) -> tuple[Piece, str | None]:
    import torch

    cuda = torch.version.cuda
    piece = Piece("torch", cuda is not None, torch.__version__, f"built for CUDA {cuda}" if cuda else
                  "CPU-only build: install torch built for CUDA (see pytorch.org) to use a GPU",
                  needed=not compile_only)
    return piece, cuda


def _gpus(compile_only: bool) -> list[Piece]:
    import torch

    if not torch.cuda.is_available():
        return [Piece("GPU", False, detail="torch sees no CUDA GPU (torch.cuda.is_available() is False): check "
                                            "nvidia-smi and that torch is built for CUDA", needed=not compile_only)]
    pieces = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        pieces.append(Piece(f"GPU {index}", True, f"sm_{props.major}{props.minor}",
                            f"{props.name}, {props.total_memory / 2**30:.0f} GiB", needed=not compile_only))
    return pieces


def _driver() -> Piece | None:
    from hwnas.profiling.device import _cuda_driver_version

    try:
        version = _cuda_driver_version()
    except Exception:  # libcuda missing: the GPU row says so
        return None
    return Piece("CUDA driver", True, version, "supports CUDA up to this version") if version else None


def _bindings(torch_cuda: str | None) -> Piece:
    from hwnas.kernels.nvrtc import install_hint

    version = _dist_version("cuda-bindings")
    try:
        import cuda.bindings  # noqa: F401
    except ImportError as exc:
        return Piece("cuda-bindings", False, version or "", f"cannot be imported ({exc}); {install_hint()}")
    if version and torch_cuda and version.split(".")[0] != torch_cuda.split(".")[0]:
        return Piece("cuda-bindings", False, version, f"CUDA {version.split('.')[0]} beside torch built for CUDA "
                     f"{torch_cuda}: {install_hint()}")
    legacy = _dist_version("cuda-python")
    detail = f"(cuda-python {legacy} is installed too)" if legacy else ""
    return Piece("cuda-bindings", True, version or "unknown", detail)


def _nvrtc(torch_cuda: str | None) -> list[Piece]:
    from hwnas.kernels import nvrtc

    try:
        major, minor = nvrtc.version()
    except HwnasError as exc:
        return [Piece("NVRTC", False, detail=str(exc))]
    pieces = [Piece("NVRTC", True, f"{major}.{minor}", nvrtc.library_path() or "")]
    if torch_cuda and int(torch_cuda.split(".")[0]) != major:
        pieces[0] = Piece("NVRTC", False, f"{major}.{minor}", f"CUDA {major} beside torch built for CUDA "
                          f"{torch_cuda}: the driver may not load its cubins; {nvrtc.install_hint()}")
    try:
        headers = nvrtc.find_headers(major)
    except HwnasError as exc:
        pieces.append(Piece("CUDA headers", False, detail=str(exc)))
    else:
        other = headers.cuda_version and int(headers.cuda_version.split(".")[0]) != major
        pieces.append(Piece("CUDA headers", True, headers.cuda_version or "unknown",
                            f"{headers.path} (found via {headers.found_via})" + (
                                f"; of another CUDA than NVRTC {major}: if compiling fails, "
                                f"{nvrtc.install_hint()}" if other else "")))
    return pieces


def _tensorrt() -> Piece:
    try:
        import tensorrt
    except ImportError:
        return Piece("TensorRT", False, detail="not installed (the tensorrt backend and engine export need it: "
                                               "pip install 'hwnas[tensorrt]')", needed=False)
    if not hasattr(tensorrt, "Builder"):
        return Piece("TensorRT", False, _dist_version("tensorrt-stubs") or "",
                     "only its type stubs are installed, not its libraries: pip install 'hwnas[tensorrt]'",
                     needed=False)
    return Piece("TensorRT", True, getattr(tensorrt, "__version__", "unknown"), needed=False)


def _compiler() -> Piece:
    from hwnas.kernels.cpu import compiler

    try:
        cxx = compiler()
    except HwnasError as exc:
        return Piece("C++ compiler", False, detail=f"{exc} (the CPU twin of the kernels is built with it)")
    try:
        first = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()
    except OSError as exc:
        return Piece("C++ compiler", False, detail=f"{cxx} does not run: {exc}")
    return Piece("C++ compiler", True, first[0] if first else "", cxx)


def _hwnas() -> Piece:
    from hwnas._version import __version__
    from hwnas.kernels.sources import source_dir

    try:
        return Piece("hwnas", True, __version__, f"kernel sources in {source_dir()}")
    except HwnasError as exc:
        return Piece("hwnas", False, __version__, str(exc))


def gather(compile_only: bool) -> list[Piece]:
    torch_piece, torch_cuda = _torch(compile_only)
    pieces = [_hwnas(), Piece("python", True, platform.python_version(), sys.executable), torch_piece,
              *_gpus(compile_only)]
    driver = _driver()
    pieces += [driver] if driver else []
    bindings = _bindings(torch_cuda)
    pieces.append(bindings)
    if bindings.ok:
        pieces += _nvrtc(torch_cuda)
    pieces += [_tensorrt(), _compiler()]
    return pieces


def compile_all(archs: list[str]) -> list[dict[str, Any]]:
    from tqdm import tqdm

    from hwnas.kernels.cuda import KERNELS
    from hwnas.kernels.nvrtc import compile_cubin

    results = []
    for arch in tqdm(archs, desc="compiling", unit="arch", file=sys.stderr, disable=len(archs) < 2):
        start = time.perf_counter()
        try:
            cubin, _ = compile_cubin(arch)
        except HwnasError as exc:
            results.append({"arch": arch, "ok": False, "cubin_bytes": None, "kernels": 0, "seconds": None,
                            "error": str(exc)})
            continue
        missing = [name for name in KERNELS if name.encode() not in cubin]
        results.append({"arch": arch, "ok": not missing and cubin[:4] == b"\x7fELF", "cubin_bytes": len(cubin),
                        "kernels": len(KERNELS) - len(missing), "seconds": round(time.perf_counter() - start, 2),
                        "error": f"kernels missing from the cubin: {', '.join(missing)}" if missing else None})
    return results


def cmd_env(args: argparse.Namespace) -> int:
    if args.check:
        return cmd_check(args)
    if args.output is not None or args.budget is not None:
        raise HwnasError("-o/--output and --budget go with --check: hwnas env --check -o REPORT.json")
    compile_only = args.compile is not None
    pieces = gather(compile_only)
    compiled = compile_all(args.compile) if compile_only and all(p.ok for p in pieces if p.name in (
        "cuda-bindings", "NVRTC", "CUDA headers")) else []
    problems = [f"{p.name}: {p.detail}" for p in pieces if p.needed and not p.ok]
    if compile_only and not compiled:
        problems.append("--compile: nothing compiled, NVRTC is not usable (see above)")
    problems += [f"NVRTC for {c['arch']}: {c['error']}" for c in compiled if not c["ok"]]
    if args.json:
        print_json({"ok": not problems, "components": [{**asdict(p), "status": p.status} for p in pieces], "compiled": compiled,
                    "problems": problems})
    else:
        print(table([[p.name, p.status, p.version, p.detail]
                     for p in pieces], ["component", "status", "version", "detail"]))
        if compiled:
            from hwnas.kernels.cuda import KERNELS

            print()
            print(table([[c["arch"], "ok" if c["ok"] else "failed", c["cubin_bytes"], f"{c['kernels']}/{len(KERNELS)}",
                          c["seconds"]] for c in compiled], ["arch", "status", "cubin bytes", "kernels", "seconds"]))
    for problem in problems:
        print(f"hwnas: error: {problem}", file=sys.stderr)
    return 1 if problems else 0


def cmd_check(args: argparse.Namespace) -> int:
    from hwnas import files
    from hwnas.selfcheck.check import FAILED, PASSED, SKIPPED, machine, run_checks

    if args.output:
        files.check_writable(args.output, "report")  # refused now, not after a minute of checks
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    results = run_checks(args.budget, progress=not args.json)
    counts = {status: sum(r.status == status for r in results) for status in (PASSED, FAILED, SKIPPED)}
    report = {"ok": counts[FAILED] == 0, "started": started, "budget_s": args.budget, **counts,
              "paths": [r.to_dict() for r in results], "machine": machine(),
              "environment": [{**asdict(p), "status": p.status} for p in gather(compile_only=False)]}
    if args.output:
        files.write_json(args.output, report)
    if args.json:
        print_json(report)
    else:
        print(table([[r.name, r.status, _worst(r), r.worst.tolerance if r.worst else "", round(r.seconds, 2),
                      r.detail] for r in results],
                    ["path", "verdict", "worst error", "tolerance", "seconds", "detail"]))
        print(f"\n{counts[PASSED]} passed, {counts[FAILED]} failed, {counts[SKIPPED]} skipped"
              + (f"; report written to {args.output}" if args.output else ""))
    for r in results:
        if r.status == FAILED:
            print(f"hwnas: error: {r.name}: {r.detail}", file=sys.stderr)
    return 0 if report["ok"] else 1


def _worst(result: Any) -> str:
    """The worst error as a share of its tolerance (100% is the limit)."""
    worst = result.worst
    return "" if worst is None else "inf" if worst.worst == float("inf") else f"{100 * worst.worst:.3g}% of tol."
