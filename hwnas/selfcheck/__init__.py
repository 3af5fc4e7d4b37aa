"""GPU paths that prove themselves: hwnas's own code checked on the machine it runs on.

- check.py: `hwnas env --check`, every GPU path the machine can run (the kernels in each dtype,
  the fused layer, GPU timing, TensorRT, NCCL) against an independent reference, one result per
  path; kernels.py, cell.py, timing.py, engines.py, nccl.py check one path each.
- fallback.py: the fused layer's first-use check of its kernels and its fallback to the eager
  PyTorch path, and the HWNAS_FUSED setting.
- tolerance.py: how close a result must be to its reference, and why (the GPU tests use it too).
Nothing here is imported with `import hwnas`; torch is imported by the submodules.
"""
