"""Launch each selective-scan kernel once at VMamba-T stage shapes (fp16 in, fp32 out), for a profiler.

    ncu --clock-control none --section SpeedOfLight --section WarpStateStats \
        python3 benchmarks/profile_scan.py [--stages 1,3] [--general]

Runs the current kernels (N = 1: the 2-D ones) and, with --general, the previous version
(`scan_config(n1=0)`), forward then backward, each once after a compile-and-warm-up launch, so a
profiler sees two launches of each kernel (the second is the one to read). Needs CUDA.
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
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stages", default="1", help="comma-separated VMamba-T stages (1-4)")
    ap.add_argument("--general", action="store_true", help="also the general 3-D kernels (scan_config(n1=0))")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/profile_scan.py needs CUDA", file=sys.stderr)
        return 2
    from vmbench.kernels import _selective_scan_triton as T

    bench = _bench_module()
    for i in args.stages.split(","):
        kd, L = bench.STAGES[int(i) - 1]
        x = bench.make_inputs(kd, L, torch.float16)
        dy = torch.randn(128, kd, L, device="cuda")
        for n1 in (1, 0) if args.general else (1,):
            with T.scan_config(n1=n1):
                for _ in range(2):
                    _, hs = T._scan_fwd(*x, True, True)
                    T._scan_bwd_parts(dy, *x, hs, True)
        del x, dy
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
