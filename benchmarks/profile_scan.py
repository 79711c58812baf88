"""Launch each selective-scan kernel once at VMamba-T stage 1 (fp16 in, fp32 out), for a profiler.

    ncu --clock-control none --section SpeedOfLight --section WarpStateStats \
        python3 benchmarks/profile_scan.py

Runs the current kernels (N = 1: the 2-D ones) and the previous version (`scan_config(n1=0)`),
forward then backward, each once after a compile-and-warm-up launch, so a profiler sees two launches of
each kernel (the second is the one to read). Needs CUDA.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout runs uninstalled

import importlib.util

import torch


def _bench_module():
    """benchmarks/kernels.py by path (the name `kernels` is the repository's kernel package)."""
    spec = importlib.util.spec_from_file_location("scan_bench", os.path.join(os.path.dirname(__file__), "kernels.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    if not torch.cuda.is_available():
        print("benchmarks/profile_scan.py needs CUDA", file=sys.stderr)
        return 2
    from vmbench.kernels import _selective_scan_triton as T

    x = _bench_module().make_inputs(384, 3136, torch.float16)
    dy = torch.randn(128, 384, 3136, device="cuda")
    for n1 in (1, 0):
        with T.scan_config(n1=n1):
            for _ in range(2):
                _, hs = T._scan_fwd(*x, True, True)
                T._scan_bwd_parts(dy, *x, hs, True)
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
